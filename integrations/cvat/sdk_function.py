"""EfficientSAM as a CVAT auto-annotation interaction function (cvat_sdk), for deployments
with the CVAT agent instead of Nuclio:

    pip install ./client "cvat-sdk==2.80.0" "cvat-cli==2.80.0"
    export ESAM_URL=http://<gateway>:8080 ESAM_API_KEY=<key, if the gateway has keys>
    cvat-cli --server-host <cvat> --auth <user> function create-native "EfficientSAM" \\
        --function-file integrations/cvat/sdk_function.py
    cvat-cli --server-host <cvat> --auth <user> function run-agent <function id> \\
        --function-file integrations/cvat/sdk_function.py

``preprocess_image`` (once per frame; the agent keeps its result for later clicks) makes
sure the gateway holds the frame's embedding, uploading the frame only when it does not;
``detect`` then asks for the mask by the frame's id: a decode, nothing uploaded. The
gateway applies SAM's rule for a click (``multimask="auto"``, ``best_only``): one positive
point alone → the best of the three multimask candidates; anything more → the
single-mask output. The result is one ``mask`` shape (the only type CVAT's UI shows for
interactors), encoded by ``cvat_sdk.masks.encode_mask``, with its confidence.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import cvat_sdk.auto_annotation as cvataa
import PIL.Image
from cvat_sdk import models
from cvat_sdk.masks import encode_mask
from esam_client import EsamClient, Prompt

spec = cvataa.InteractionFunctionSpec(min_pos_points=1, min_neg_points=0, min_bounding_boxes=0)


@dataclass(frozen=True)
class Frame:
    """A frame the gateway holds: its id, and its bytes in case the gateway evicted it."""

    image_id: str
    data: bytes


_client: EsamClient | None = None


def client() -> EsamClient:
    global _client
    if _client is None:
        _client = EsamClient(
            os.environ.get("ESAM_URL", "http://127.0.0.1:8080"),
            api_key=os.environ.get("ESAM_API_KEY") or None,
        )
    return _client


def preprocess_image(context: cvataa.InteractionFunctionContext, image: PIL.Image.Image) -> Frame:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", compress_level=1)  # lossless
    data = buffer.getvalue()
    return Frame(client().embed(data).image_id, data)


def detect(
    context: cvataa.InteractionFunctionContext,
    pp_image: Frame,
    prompts: cvataa.InteractionPrompts,
) -> list[cvataa.InteractionResultShape]:
    positive = [(float(x), float(y)) for x, y in prompts.pos_points]
    negative = [(float(x), float(y)) for x, y in prompts.neg_points]
    box = None
    if prompts.bounding_box is not None:
        (x1, y1), (x2, y2) = prompts.bounding_box
        box = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    prompt = Prompt(
        points=positive + negative, labels=[1] * len(positive) + [0] * len(negative), box=box
    )
    answer = client().segment(  # one mask per click, by the gateway's rule for a click
        [prompt], image_id=pp_image.image_id, image=pp_image.data, multimask="auto", best_only=True
    )
    best = answer.results[0][0]
    confidence = models.AttributeValRequest(  # the predicted IoU, within CVAT's [0, 1]
        spec_id=cvataa.InteractionResultAttributes.CONFIDENCE,
        value=str(min(max(best.score, 0.0), 1.0)),
    )
    return [
        cvataa.InteractionResultShape(
            type="mask", points=encode_mask(best.mask()), attributes=[confidence]
        )
    ]
