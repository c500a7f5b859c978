"""EfficientSAM, written for this project: model, checkpoints, pre- and post-processing."""

from service.model.checkpoint import (
    build_model,
    infer_variant,
    load_model,
    load_named,
    random_model,
    read_state_dict,
)
from service.model.config import CONFIGS, VARIANTS, ModelConfig, Variant
from service.model.efficient_sam import EfficientSam, Precision

__all__ = [
    "CONFIGS",
    "VARIANTS",
    "EfficientSam",
    "ModelConfig",
    "Precision",
    "Variant",
    "build_model",
    "infer_variant",
    "load_model",
    "load_named",
    "random_model",
    "read_state_dict",
]
