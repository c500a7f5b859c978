"""EfficientSAM, written for this project: model, checkpoints, pre- and post-processing."""

from service.model.checkpoint import (
    build_model,
    infer_variant,
    load_model,
    load_named,
    random_model,
    read_state_dict,
    weights_id,
)
from service.model.config import CONFIGS, VARIANTS, ModelConfig, Variant
from service.model.efficient_sam import (
    Candidates,
    EfficientSam,
    Precision,
    pad_prompts,
    ranked_candidates,
)

__all__ = [
    "CONFIGS",
    "VARIANTS",
    "Candidates",
    "EfficientSam",
    "ModelConfig",
    "Precision",
    "Variant",
    "build_model",
    "infer_variant",
    "load_model",
    "load_named",
    "pad_prompts",
    "random_model",
    "ranked_candidates",
    "read_state_dict",
    "weights_id",
]
