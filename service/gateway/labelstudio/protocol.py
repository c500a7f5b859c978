"""Label Studio's ML-backend protocol (1.23.2) as it reaches the adapter.

Label Studio sends more than the adapter reads (whole serialized tasks with their
drafts and annotations, its own ids): unknown fields are accepted and ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class SetupRequest(_Lenient):
    project: str | None = None
    label_config: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    extra_params: Any = None


class SetupResponse(BaseModel):
    model_version: str


class Context(_Lenient):
    result: list[dict[str, Any]] = Field(default_factory=list)


class PredictParams(_Lenient):
    context: Context | None = None


class PredictRequest(_Lenient):
    tasks: list[dict[str, Any]] = Field(min_length=1)  # a whole project's, from "Retrieve"
    label_config: str
    project: str | None = None
    params: PredictParams | None = None


class TaskPrediction(BaseModel):
    result: list[dict[str, Any]]
    score: float
    model_version: str


class PredictResponse(BaseModel):
    results: list[TaskPrediction]


class HealthResponse(BaseModel):
    status: str = "UP"
    model_class: str = "EfficientSAM"
    model_version: str
