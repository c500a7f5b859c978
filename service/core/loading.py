"""Load the model the settings ask for and name it (the name keys the cache)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from service.errors import CheckpointError, WeightsDownloadError
from service.model import EfficientSam, Variant, load_model, random_model, weights_id
from service.model.weights import download_weights
from service.settings import Settings

log = logging.getLogger(__name__)

#: Bump when resizing/normalisation changes: old cached embeddings stop matching.
PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class LoadedModel:
    model: EfficientSam
    model_id: str


def load_serving_model(checkpoint: str, variant: Variant | None, device: str) -> LoadedModel:
    """``checkpoint`` is a path, or ``random`` for the demo mode."""
    if checkpoint == "random":
        chosen: Variant = variant or "ti"
        log.warning(
            "ESAM_CHECKPOINT=random: serving EfficientSAM-%s with RANDOM WEIGHTS. "
            "Masks are meaningless; this is a demo mode.",
            chosen,
        )
        model = random_model(chosen).to(device)
        model_id = f"{weights_id(chosen, checkpoint)}-p{PREPROCESS_VERSION}"
        return LoadedModel(model, model_id)
    path = Path(checkpoint)
    model = load_model(path, variant, device)
    model_id = f"{weights_id(model.config.variant, checkpoint)}-p{PREPROCESS_VERSION}"
    log.info("loaded %s from %s", model_id, path)
    return LoadedModel(model, model_id)


def resolve_checkpoint(settings: Settings) -> str:
    """The configured checkpoint, or the official one (downloaded and verified) when unset."""
    if settings.checkpoint:
        return settings.checkpoint
    variant: Variant = settings.variant or "ti"
    try:
        return str(download_weights(variant, settings.weights_dir))
    except WeightsDownloadError as exc:
        raise CheckpointError(
            f"no checkpoint configured and the official EfficientSAM-{variant} weights could not "
            f"be downloaded ({exc}). Point ESAM_CHECKPOINT at an efficient_sam_vit*.pt file, "
            "or set ESAM_CHECKPOINT=random for a demo with random weights."
        ) from exc
