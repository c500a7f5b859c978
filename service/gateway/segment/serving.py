"""``POST /segment``: prompts → masks, with the embedding from the cache or a fresh encode."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.core.decoders import Candidate, DecodeRequest
from service.core.embedding import Embedding
from service.errors import InvalidPromptError
from service.gateway.embedding_source import image_embedding, image_source
from service.gateway.mask_formats import mask_payloads
from service.gateway.segment.protocol import (
    CandidateOut,
    Logits,
    PromptResult,
    SegmentRequest,
    SegmentResponse,
)
from service.gateway.state import ServingState
from service.model import Candidates
from service.model.prompts import Prompt, prompts_to_arrays

PromptArrays = tuple[NDArray[np.float32], NDArray[np.float32]]


def _prompts(request: SegmentRequest) -> list[Prompt]:
    return [Prompt(points=p.points, labels=p.labels, box=p.box) for p in request.prompts]


def _candidate(candidate: Candidate, mask: Any) -> CandidateOut:
    logits = None
    if candidate.logits is not None:
        raw = np.ascontiguousarray(candidate.logits, dtype="<f4")
        logits = Logits(shape=list(raw.shape), data=base64.b64encode(raw.tobytes()).decode())
    return CandidateOut(
        score=candidate.score,
        area=candidate.area,
        bbox=candidate.bbox,
        mask=mask,
        logits=logits,
    )


def candidates_wanted(
    multimask: bool | Literal["auto"], best_only: bool, prompt: Prompt
) -> Candidates:
    if multimask == "auto":
        multimask = prompt.ambiguous
    if not multimask:
        return "single"
    return "best" if best_only else "multimask"


async def _decode(
    state: ServingState,
    image_id: str,
    embedding: Embedding,
    arrays: PromptArrays,
    wanted: list[Candidates],
    return_logits: bool,
) -> list[list[Candidate]]:
    """Each prompt's candidates, in prompt order: one decoder request per kind of answer
    wanted (one in all unless ``"auto"`` mixes them)."""
    points, labels = arrays
    kinds = list(dict.fromkeys(wanted))
    groups = [[i for i, w in enumerate(wanted) if w == kind] for kind in kinds]
    answers = await asyncio.gather(
        *(
            state.decoder.segment(
                DecodeRequest(
                    image_id=image_id,
                    embedding=embedding,
                    points=points if len(kinds) == 1 else points[group],
                    labels=labels if len(kinds) == 1 else labels[group],
                    candidates=kind,
                    return_logits=return_logits,
                )
            )
            for kind, group in zip(kinds, groups, strict=True)
        )
    )
    per_prompt: list[list[Candidate]] = [[] for _ in wanted]
    for group, answer in zip(groups, answers, strict=True):
        for i, candidates in zip(group, answer, strict=True):
            per_prompt[i] = candidates
    return per_prompt


async def segment(state: ServingState, tenant: str, request: SegmentRequest) -> SegmentResponse:
    if len(request.prompts) > state.settings.max_prompts:
        raise InvalidPromptError(
            f"prompts: {len(request.prompts)} prompts; at most {state.settings.max_prompts}"
        )
    img_size = state.loaded.model.config.img_size
    prompts = _prompts(request)
    arrays: list[PromptArrays] = []

    def check(width: int, height: int) -> None:
        arrays.append(prompts_to_arrays(prompts, width, height, img_size=img_size))

    image_id, embedding, cached = await image_embedding(
        state, tenant, *image_source(request), check
    )
    wanted = [candidates_wanted(request.multimask, request.best_only, p) for p in prompts]
    per_prompt = await _decode(
        state, image_id, embedding, arrays[-1], wanted, request.return_logits
    )
    flat = [c for cands in per_prompt for c in cands]
    masks = iter(await mask_payloads([c.rle for c in flat], request.mask_format))
    return SegmentResponse(
        image_id=image_id,
        model=state.model_id,
        width=embedding.width,
        height=embedding.height,
        cached=cached,
        results=[
            PromptResult(candidates=[_candidate(c, next(masks)) for c in cands])
            for cands in per_prompt
        ],
    )
