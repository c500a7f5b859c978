"""``POST /segment``: prompts → masks, with the embedding from the cache or a fresh encode."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.core.decoders import Candidate, DecodeRequest
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


def _prompt_arrays(request: SegmentRequest, width: int, height: int, img_size: int) -> PromptArrays:
    prompts = [Prompt(points=p.points, labels=p.labels, box=p.box) for p in request.prompts]
    return prompts_to_arrays(prompts, width, height, img_size=img_size)


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


def candidates_wanted(multimask: bool, best_only: bool) -> Candidates:
    if not multimask:
        return "single"
    return "best" if best_only else "multimask"


async def segment(state: ServingState, tenant: str, request: SegmentRequest) -> SegmentResponse:
    if len(request.prompts) > state.settings.max_prompts:
        raise InvalidPromptError(
            f"prompts: {len(request.prompts)} prompts; at most {state.settings.max_prompts}"
        )
    img_size = state.loaded.model.config.img_size
    arrays: list[PromptArrays] = []

    def check(width: int, height: int) -> None:
        arrays.append(_prompt_arrays(request, width, height, img_size))

    image_id, embedding, cached = await image_embedding(
        state, tenant, *image_source(request), check
    )
    points, labels = arrays[-1]
    per_prompt = await state.decoder.segment(
        DecodeRequest(
            image_id=image_id,
            embedding=embedding,
            points=points,
            labels=labels,
            candidates=candidates_wanted(request.multimask, request.best_only),
            return_logits=request.return_logits,
        )
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
