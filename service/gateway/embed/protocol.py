"""Schemas of ``POST /embed``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class EmbedResponse(BaseModel):
    image_id: str = Field(description="Lowercase hex SHA-256 of the uploaded bytes.")
    width: int = Field(description="Width of the upright image (EXIF orientation applied).")
    height: int
    model: str = Field(description="Model id: variant, checkpoint digest, preprocessing version.")
    cached: bool = Field(
        description="True when the embedding was cached already; false when this request "
        "waited for an encode (its own, or one already running for the same image)."
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "image_id": "5e3c0a1f0b2d4f7e9c8a6b5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f",
                    "width": 1072,
                    "height": 603,
                    "model": "efficientsam-ti-3f6a1c2b9d0e-p1",
                    "cached": False,
                }
            ]
        }
    }
