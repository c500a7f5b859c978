"""Client of the EfficientSAM serving gateway: ``EsamClient`` (sync), ``AsyncEsamClient``."""

from esam_client.clients import AsyncEsamClient, EsamClient
from esam_client.errors import EmbeddingNotFoundError, EsamError, UnreachableError
from esam_client.models import (
    Candidate,
    Embedded,
    Everything,
    EverythingMask,
    Prompt,
    Segmentation,
    decode_rle,
)
from esam_client.protocol import image_id_of

__all__ = [
    "AsyncEsamClient",
    "Candidate",
    "Embedded",
    "EmbeddingNotFoundError",
    "EsamClient",
    "EsamError",
    "Everything",
    "EverythingMask",
    "Prompt",
    "Segmentation",
    "UnreachableError",
    "decode_rle",
    "image_id_of",
]
