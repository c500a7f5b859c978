"""Strict loading of the official EfficientSAM checkpoints, with clear errors.

Accepted files:

* ``efficient_sam_vitt.pt`` / ``efficient_sam_vits.pt``: ``torch.save({"model": state_dict})``;
* ``efficient_sam_vits.pt.zip``: a zip archive holding one such ``.pt`` file;
* a bare state dict with the same keys.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from service.errors import CheckpointError
from service.model.config import CONFIGS, Variant
from service.model.efficient_sam import EfficientSam

_PATCH_KEY = "image_encoder.patch_embed.proj.weight"
_MAX_LISTED = 5


def _listing(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" (+{more} more)" if more > 0 else "")


def _torch_load(source: str | IO[bytes], name: str) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to parse untrusted bytes means "not a checkpoint"
        raise CheckpointError(
            f"{name}: not a PyTorch checkpoint, or a truncated one ({type(exc).__name__})"
        ) from exc


def _open_archive(path: Path) -> Any:
    """``torch.load`` the file, unwrapping a zip that holds the ``.pt``."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if not head:
        raise CheckpointError(f"{path}: file is empty")
    if head[:2] == b"PK" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or corrupt zip archive (no central directory)")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n.endswith("data.pkl") for n in names):
                return _torch_load(str(path), str(path))  # a PyTorch archive itself
            inner = [
                n for n in names if n.endswith((".pt", ".pth")) and not n.startswith("__MACOSX")
            ]
            if len(inner) != 1:
                raise CheckpointError(
                    f"{path}: zip archive should hold exactly one .pt checkpoint, "
                    f"found {len(inner)}"
                )
            try:
                data = archive.read(inner[0])
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise CheckpointError(f"{path}: corrupt zip member {inner[0]}") from exc
        return _torch_load(io.BytesIO(data), f"{path}!{inner[0]}")
    return _torch_load(str(path), str(path))


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a state dict, or raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    obj = _open_archive(path)
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: not an EfficientSAM checkpoint (expected {{'model': state_dict}})"
        )
    return dict(state)


def infer_variant(state: Mapping[str, Tensor]) -> Variant:
    """Tell ``ti`` from ``s`` by the width of the patch embedding."""
    weight = state.get(_PATCH_KEY)
    if weight is None:
        raise CheckpointError(f"not an EfficientSAM checkpoint: no {_PATCH_KEY}")
    for variant, config in CONFIGS.items():
        if weight.shape[0] == config.encoder_dim:
            return variant
    raise CheckpointError(
        f"patch embedding width {weight.shape[0]} matches no EfficientSAM variant "
        f"({', '.join(f'{v}={c.encoder_dim}' for v, c in CONFIGS.items())})"
    )


def build_model(state: Mapping[str, Tensor], variant: Variant | None = None) -> EfficientSam:
    """Build the model for ``variant`` (inferred when ``None``) and load ``state`` strictly."""
    variant = variant or infer_variant(state)
    model = EfficientSam(CONFIGS[variant])
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        raise CheckpointError(f"not an EfficientSAM-{variant} checkpoint: " + "; ".join(parts))
    mismatched = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if mismatched:
        key = mismatched[0]
        raise CheckpointError(
            f"checkpoint does not fit EfficientSAM-{variant}: {len(mismatched)} shape mismatches, "
            f"e.g. {key} is {list(state[key].shape)} in the checkpoint, "
            f"EfficientSAM-{variant} expects {list(expected[key].shape)}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_model(
    path: str | Path, variant: Variant | None = None, device: str | torch.device = "cpu"
) -> EfficientSam:
    """Load an official checkpoint (``.pt`` or ``.pt.zip``) strictly."""
    model = build_model(read_state_dict(path), variant)
    return model.to(device)


def random_model(variant: Variant, seed: int = 0) -> EfficientSam:
    """Random weights, for demos and tests only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EfficientSam(CONFIGS[variant])
    return model.eval()


def load_named(checkpoint: str, variant: Variant = "ti") -> EfficientSam:
    """The model a Triton model's ``checkpoint`` names: a file's weights, or ``random``
    (random weights of ``variant``). :class:`CheckpointError` for a missing or bad file."""
    if checkpoint == "random":
        return random_model(variant)
    if not checkpoint or not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {checkpoint!r} not found")
    return load_model(checkpoint)


def weights_id(variant: Variant, checkpoint: str) -> str:
    """What names a model's weights: ``efficientsam-<variant>-<first 12 hex digits of the
    checkpoint file's SHA-256>``, or ``...-RANDOM-WEIGHTS`` for ``random``. The gateway's
    model id (the cache's key) starts with it; the Triton decoder checks clicks against it."""
    if checkpoint == "random":
        return f"efficientsam-{variant}-RANDOM-WEIGHTS"
    digest = hashlib.sha256()
    with Path(checkpoint).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"efficientsam-{variant}-{digest.hexdigest()[:12]}"
