"""This deployment's OpenAPI document: FastAPI's, plus what the settings decide.

The request models state every rule that does not depend on configuration; limits set
by ``Settings`` (prompts per request, image bytes, the segment-everything budget) and
the API key are added here, so the document served is exactly what this server accepts.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.core.edges import EdgeParams
from service.core.everything import EverythingParams, densest_grid
from service.gateway.auth import OPEN_PATHS, accepts_basic
from service.settings import Settings

JsonObject = dict[str, Any]
SECURITY_SCHEME = "apiKey"
BASIC_SCHEME = "apiKeyAsBasicPassword"


def deployment_openapi(app: FastAPI, settings: Settings) -> JsonObject:
    """Built once per app; ``app.openapi`` returns it."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = document["components"]["schemas"]
        for name in ("SegmentByIdRequest", "SegmentWithImageRequest"):
            schemas[name]["properties"]["prompts"]["maxItems"] = settings.max_prompts
        _limit_image_size(document, settings.max_image_bytes)
        for family, default in (
            ("Everything", EverythingParams().points_per_side),
            ("Edges", EdgeParams().points_per_side),
        ):
            _grid_budget(schemas, family, default, settings.max_everything_prompts)
        _priority_header(document)
        if settings.auth_enabled:
            _require_api_key(document)
        app.openapi_schema = document
    return app.openapi_schema


def _limit_image_size(document: JsonObject, max_image_bytes: int) -> None:
    """Base64 images: at most the length of ``ESAM_MAX_IMAGE_BYTES`` bytes in base64."""
    max_length = 4 * math.ceil(max_image_bytes / 3)
    embed_json = document["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]
    images = [
        embed_json["schema"]["properties"]["image"],
        document["components"]["schemas"]["SegmentWithImageRequest"]["properties"]["image"],
        document["components"]["schemas"]["EverythingWithImageRequest"]["properties"]["image"],
        document["components"]["schemas"]["EdgesWithImageRequest"]["properties"]["image"],
    ]
    for image in images:
        image["maxLength"] = max_length


def _grid_budget(schemas: JsonObject, family: str, default: int, max_prompts: int) -> None:
    """``ESAM_MAX_EVERYTHING_PROMPTS`` bounds points_per_side² × crops of a grid job
    (``family``: segment everything's or edge detection's requests): the grid without
    crops, the crop depths it allows, and (if/then) a smaller grid for each depth."""
    ceiling = 0
    for name in (f"{family}ByIdRequest", f"{family}WithImageRequest"):
        points_per_side = schemas[name]["properties"]["points_per_side"]
        ceiling = int(points_per_side["maximum"])
        points_per_side["maximum"] = densest_grid(max_prompts, 0, ceiling)
        points_per_side["default"] = densest_grid(max_prompts, 0, default)
    with_image = schemas[f"{family}WithImageRequest"]
    crop_n_layers = with_image["properties"]["crop_n_layers"]
    depths = range(int(crop_n_layers["maximum"]) + 1)
    allowed = [n for n in depths if densest_grid(max_prompts, n, ceiling) >= 1]
    crop_n_layers["maximum"] = allowed[-1]
    rule: JsonObject = {}
    for n in reversed(allowed[1:]):
        grid = densest_grid(max_prompts, n, ceiling)
        if grid < ceiling:
            rule = {
                "if": {
                    "required": ["crop_n_layers"],
                    "properties": {"crop_n_layers": {"const": n}},
                },
                "then": {"properties": {"points_per_side": {"maximum": grid}}},
                **({"else": rule} if rule else {}),
            }
    with_image.update(rule)


def _require_api_key(document: JsonObject) -> None:
    """Bearer keys on every operation but the probes and the metrics; under
    ``/labelstudio`` (Label Studio sends only Basic) a key as the Basic password too."""
    document["components"]["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "one of ESAM_API_KEYS (or ESAM_API_KEYS_FILE); the key's tenant "
            "sees only the embeddings it uploaded",
        },
        BASIC_SCHEME: {
            "type": "http",
            "scheme": "basic",
            "description": "any user name, one of the API keys as the password "
            "(Label Studio's ML backend routes only)",
        },
    }
    for path, operations in document["paths"].items():
        security: list[JsonObject] = [] if path in OPEN_PATHS else [{SECURITY_SCHEME: []}]
        if accepts_basic(path):
            security.append({BASIC_SCHEME: []})
        for operation in operations.values():
            operation["security"] = security


#: the operations whose work the priority header ranks
PRIORITISED = ("/embed", "/segment", "/segment/everything", "/edges", "/labelstudio/predict")


def _priority_header(document: JsonObject) -> None:
    """``X-Priority`` (read by ``gateway.tenancy`` before the body) on the operations whose
    work it ranks."""
    parameter = {
        "name": "X-Priority",
        "in": "header",
        "required": False,
        "description": "`bulk` for work nobody waits on (precomputes, batch predictions): it "
        "may use only its share of the encode budget and the decoder, and goes to Triton at "
        "a lower priority; `interactive` (the default) for an annotator. Segment everything "
        "and edges always run as bulk. Another value: 422 `invalid_request`.",
        "schema": {"type": "string", "enum": ["interactive", "bulk"], "default": "interactive"},
    }
    for path in PRIORITISED:
        operation = document["paths"][path]["post"]
        operation.setdefault("parameters", []).append(parameter)
