"""Label Studio's ML-backend protocol (1.23.2) as it reaches the adapter, and the answers.

Label Studio sends more than the adapter reads (whole serialized tasks with drafts and
annotations, its own ids, login fields): unknown fields are accepted and ignored
(``additionalProperties``), nulls where Label Studio sends them. What the adapter reads
is typed and strict, so the OpenAPI document states what is refused: a click without
numeric coordinates, a task without ``data``, an empty batch. What JSON Schema cannot
state (a labeling config the model can answer, a task's image reference) is in the
descriptions and answered with 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag
from pydantic.config import JsonDict

from service.gateway.examples import EXAMPLE_IMAGE_BASE64
from service.gateway.labelstudio.label_config import MAX_CONFIG_CHARS
from service.gateway.protocol_types import Integer

KEYPOINT, RECTANGLE = "keypointlabels", "rectanglelabels"
#: the context result types that prompt the model; every other type is ignored
CLICK_TYPES = (KEYPOINT, RECTANGLE)

CONFIG_DESCRIPTION = (
    'The project\'s labeling config (XML). It needs an `<Image value="$<key>">` and a '
    "`<BrushLabels>` (or `<PolygonLabels>`) whose `toName` is that image; anything else "
    "is refused with 422 `invalid_request`."
)


EXAMPLE_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="mask" toName="image"><Label value="object"/></BrushLabels>'
    '<KeyPointLabels name="click" toName="image" smart="true"><Label value="object"/>'
    "</KeyPointLabels></View>"
)
#: the document's example image, inline (a Label Studio project's tasks usually name
#: /data/upload/... files, which only a configured ESAM_LABEL_STUDIO_URL can fetch)
EXAMPLE_TASK: JsonDict = {
    "id": 1,
    "data": {"image": "data:image/png;base64," + EXAMPLE_IMAGE_BASE64},
}
EXAMPLE_CLICK: JsonDict = {
    "type": "keypointlabels",
    "from_name": "click",
    "to_name": "image",
    "value": {"x": 50.0, "y": 50.0, "keypointlabels": ["object"]},
    "is_positive": True,
}


class _Lenient(BaseModel):
    """Extra fields allowed (Label Studio's), the ones read are strict."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


Percent = Annotated[float, Field(description="percent of the image's width or height")]
Labels = Annotated[list[str], Field(default_factory=list)]


class SetupRequest(_Lenient):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "project": "1.1764000000",
                    "schema": EXAMPLE_CONFIG,
                    "hostname": "http://label-studio:8080",
                    "access_token": None,
                    "extra_params": None,
                }
            ]
        }
    )

    project: str | None = Field(default=None, description="`<project id>.<created at>`")
    label_config: str | None = Field(
        default=None, alias="schema", max_length=MAX_CONFIG_CHARS, description=CONFIG_DESCRIPTION
    )
    hostname: str | None = None
    access_token: str | None = None
    model_version: str | None = None
    extra_params: Any = None


class SetupResponse(BaseModel):
    model_version: str


class Task(_Lenient):
    """A task as Label Studio serializes it; only ``data`` is read."""

    id: Integer | None = None
    data: dict[str, Any] = Field(
        description="the task's data: the labeling config's image key holds the image "
        "reference: a Label Studio path (`/data/upload/...`, `/data/local-files/?d=...`), "
        "cloud storage (`s3://`, `gs://`, `azure-blob://`, presigned through Label Studio), "
        "an http(s) URL on `ESAM_FETCH_ALLOWED_HOSTS`, or a `data:image/...;base64,` URI"
    )


class KeypointValue(_Lenient):
    x: Percent
    y: Percent
    keypointlabels: Labels
    labels: Labels


class RectangleValue(_Lenient):
    x: Percent = Field(description="left edge, percent of the width")
    y: Percent = Field(description="top edge, percent of the height")
    width: float = Field(ge=0, description="percent of the image's width")
    height: float = Field(ge=0, description="percent of the image's height")
    rectanglelabels: Labels
    labels: Labels


class KeypointClick(_Lenient):
    """A smart KeyPointLabels click: a point, background when ``is_positive`` is false."""

    type: Literal["keypointlabels"]
    value: KeypointValue
    is_positive: bool | None = None


class RectangleClick(_Lenient):
    """A smart RectangleLabels drag: a box (the last one of a context counts)."""

    type: Literal["rectanglelabels"]
    value: RectangleValue


class OtherResult(_Lenient):
    """Any other result in the context: ignored."""

    type: str = Field(json_schema_extra={"not": {"enum": list(CLICK_TYPES)}})


def _result_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    return kind if kind in CLICK_TYPES else "other"


ContextResult = Annotated[
    Annotated[KeypointClick, Tag(KEYPOINT)]
    | Annotated[RectangleClick, Tag(RECTANGLE)]
    | Annotated[OtherResult, Tag("other")],
    Discriminator(
        _result_kind,
        custom_error_type="context_result",
        custom_error_message="a context result is an object with a string 'type'",
    ),
]


class Context(_Lenient):
    result: list[ContextResult] = Field(default_factory=list)


class PredictParams(_Lenient):
    context: Context | None = Field(
        default=None, description="the annotator's clicks (interactive mode); null otherwise"
    )


class PredictRequest(_Lenient):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {  # an annotator's click
                    "tasks": [EXAMPLE_TASK],
                    "label_config": EXAMPLE_CONFIG,
                    "project": "1.1764000000",
                    "params": {
                        "login": None,
                        "password": None,
                        "context": {"result": [EXAMPLE_CLICK]},
                    },
                },
                {  # Retrieve predictions: encode ahead
                    "tasks": [EXAMPLE_TASK],
                    "label_config": EXAMPLE_CONFIG,
                    "project": "1.1764000000",
                    "params": {"login": None, "password": None, "context": None},
                },
            ]
        }
    )

    tasks: list[Task] = Field(
        min_length=1,
        description="one task (a click, an opened task) or a project's (Retrieve predictions)",
    )
    label_config: str = Field(max_length=MAX_CONFIG_CHARS, description=CONFIG_DESCRIPTION)
    project: str | None = None
    params: PredictParams | None = None


class _Region(BaseModel):
    id: str
    from_name: str = Field(description="the output tag's name in the labeling config")
    to_name: str = Field(description="the image's name in the labeling config")
    original_width: int
    original_height: int
    image_rotation: int = 0
    readonly: bool = False
    score: float = Field(description="the mask's predicted IoU")


class BrushValue(BaseModel):
    format: Literal["rle"] = "rle"
    rle: list[int] = Field(
        description="Label Studio's brush RLE (`label_studio_sdk.converter.brush`) of the "
        "mask as RGBA",
        json_schema_extra={"items": {"type": "integer", "minimum": 0, "maximum": 255}},
    )
    brushlabels: list[str]


class BrushRegion(_Region):
    type: Literal["brushlabels"] = "brushlabels"
    value: BrushValue


class PolygonValue(BaseModel):
    points: list[tuple[float, float]] = Field(description="[x, y] in percent of the image")
    closed: bool = True
    polygonlabels: list[str]


class PolygonRegion(_Region):
    type: Literal["polygonlabels"] = "polygonlabels"
    value: PolygonValue


class TaskPrediction(BaseModel):
    result: list[BrushRegion | PolygonRegion]
    score: float
    model_version: str = Field(
        description="the model's version; `+pending` after it for a task still being "
        "encoded when the batch's answer was due, `+failed` for one that failed (both are "
        "retried by the next Retrieve predictions)"
    )


class PredictResponse(BaseModel):
    results: list[TaskPrediction] = Field(description="one per task, in the tasks' order")


class HealthResponse(BaseModel):
    status: Literal["UP"] = "UP"
    model_class: str = "EfficientSAM"
    model_version: str


class VersionsResponse(BaseModel):
    versions: list[str]


class WebhookEvent(_Lenient):
    """A Label Studio webhook event (annotation created, START_TRAINING, ...)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"action": "START_TRAINING", "project": {"id": 1}}]}
    )

    action: str


class WebhookResponse(BaseModel):
    status: Literal["ok"] = "ok"
