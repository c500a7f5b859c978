"""The decoder interface every backend implements: prompts in, candidates out.

Shaped like ``encoders/base.py``. A backend decodes prompts against one image's
embedding and gives each prompt's candidates as COCO RLE with their score, area and
box; wire formats (PNG, polygons, arrays) are the edge's business. Two backends:
``local`` (the model in this process, off the event loop) and ``triton``
(``efficientsam_decoder`` in Triton, embeddings resident on its device).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from service.core.edges import EdgeMap, EdgeParams
from service.core.embedding import Embedding
from service.core.everything import Box, EverythingParams, Proposal
from service.model import Candidates
from service.model.masks import CocoRle


@dataclass(frozen=True)
class Candidate:
    score: float
    area: int
    bbox: list[float]  # x, y, w, h (zeros for an empty mask)
    rle: CocoRle
    logits: NDArray[np.float32] | None  # [256, 256] low-resolution logits, when asked for


@dataclass(frozen=True)
class DecodeRequest:
    image_id: str  # with the model id, names the embedding where a backend keeps it
    embedding: Embedding
    points: NDArray[np.float32]  # [N, P, 2], model frame
    labels: NDArray[np.float32]  # [N, P]
    candidates: Candidates
    return_logits: bool


class Decoder(Protocol):
    """Decodes prompts against cached embeddings.

    ``segment`` gives one list of candidates per prompt, in prompt order, best score
    first. ``everything`` runs the point grid (``crops``: the whole image's box and
    embedding first, then any crops'), ``edges`` the edge detection on such a grid; both
    are long jobs, at most ``ESAM_MAX_EVERYTHING_JOBS`` at once together. All raise
    :class:`service.errors.OverloadedError` when the backend's queue is full (429 at once)
    and :class:`service.errors.DecoderUnavailableError` when it cannot answer in time.
    """

    name: str
    #: why the decoder must not be used (it holds another checkpoint), else None
    mismatch: str | None

    @property
    def everything_jobs_running(self) -> int:
        """Segment-everything and edge jobs running on this replica now."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool: ...

    async def segment(self, request: DecodeRequest) -> list[list[Candidate]]: ...

    async def everything(
        self, crops: Sequence[tuple[Box, Embedding]], params: EverythingParams
    ) -> list[Proposal]: ...

    async def edges(
        self, image_id: str, crops: Sequence[tuple[Box, Embedding]], params: EdgeParams
    ) -> EdgeMap: ...
