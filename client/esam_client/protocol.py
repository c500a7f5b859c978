"""The one request layer of both clients: requests are built, answers read and the
steps of a call (look before uploading, upload again once on 404) decided here,
without I/O. A call is a generator that yields ``httpx.Request``s and receives the
``httpx.Response``s; ``EsamClient`` and ``AsyncEsamClient`` only send them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Generator, Sequence
from typing import Any, Literal, TypeVar

import httpx

from esam_client.errors import EmbeddingNotFoundError, EsamError
from esam_client.models import (
    Candidate,
    Embedded,
    Everything,
    EverythingMask,
    Prompt,
    Segmentation,
)

T = TypeVar("T")
#: a call: yields requests, receives their responses, returns the result
Flow = Generator[httpx.Request, httpx.Response, T]

RETRY_STATUSES = frozenset({429, 503})
MAX_BACKOFF_S = 30.0


def image_id_of(data: bytes) -> str:
    """The gateway's id of an image file: the SHA-256 of its bytes, lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def retry_delay(response: httpx.Response | None, attempt: int, backoff_s: float) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or None when not to retry.

    429 and 503 (and no answer at all, ``response`` None) are retried: after the
    server's ``Retry-After`` when it sends one, else after an exponential backoff.
    """
    if response is not None and response.status_code not in RETRY_STATUSES:
        return None
    if response is not None:
        try:
            return max(0.0, float(response.headers.get("Retry-After", "")))
        except ValueError:
            pass
    return min(MAX_BACKOFF_S, backoff_s * 2.0**attempt)


def raise_for(response: httpx.Response) -> None:
    """The gateway's error as an exception (``EmbeddingNotFoundError`` for a 404 by id)."""
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200] or response.reason_phrase
    kind = EmbeddingNotFoundError if code == "embedding_not_found" else EsamError
    raise kind(response.status_code, code, message)


#: the ``X-Priority`` header's values
Priority = Literal["interactive", "bulk"]


class Endpoint:
    """Where the gateway is and how to authenticate: builds every request."""

    def __init__(
        self, url: str, api_key: str | None = None, priority: Priority | None = None
    ) -> None:
        """``priority``: ``bulk`` for work nobody waits on (the gateway keeps a share of
        its encoder and decoder for ``interactive`` requests, the default)."""
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if priority is not None:
            self.headers["X-Priority"] = priority

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Request:
        return httpx.Request(
            method,
            self.url + path,
            json=json,
            content=content,
            headers={**self.headers, **(headers or {})},
        )


def _upload(endpoint: Endpoint, data: bytes) -> Flow[Embedded]:
    response = yield endpoint.request(
        "POST", "/embed", content=data, headers={"Content-Type": "application/octet-stream"}
    )
    raise_for(response)
    body = response.json()
    return Embedded(
        image_id=body["image_id"],
        uploaded=True,
        cached=bool(body["cached"]),
        width=int(body["width"]),
        height=int(body["height"]),
        model=str(body["model"]),
    )


def embed(endpoint: Endpoint, data: bytes) -> Flow[Embedded]:
    """Ask whether the cache has the image (by its hash); upload it only when not."""
    image_id = image_id_of(data)
    head = yield endpoint.request("HEAD", f"/embeddings/{image_id}")
    if head.status_code == 204:
        return Embedded(image_id=image_id, uploaded=False, cached=True)
    # 404, or an error HEAD cannot explain (it has no body): the upload's answer will
    return (yield from _upload(endpoint, data))


def _by_id_or_upload(
    endpoint: Endpoint, path: str, body: dict[str, Any], image_id: str | None, data: bytes | None
) -> Flow[dict[str, Any]]:
    """POST by image id; on 404 ``embedding_not_found`` upload the image once and retry."""
    if image_id is None:
        if data is None:
            raise ValueError("give the image (path or bytes) or its image_id")
        image_id = image_id_of(data)
    response = yield endpoint.request("POST", path, json={"image_id": image_id, **body})
    if response.status_code == 404 and data is not None:
        yield from _upload(endpoint, data)
        response = yield endpoint.request("POST", path, json={"image_id": image_id, **body})
    raise_for(response)
    answer: dict[str, Any] = response.json()
    return answer


def _bbox(values: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in values)
    return x, y, w, h


#: True: three candidates per prompt; False: one; "auto": the gateway's rule for a click
#: (three for one positive point alone, one for more points or a box)
Multimask = bool | Literal["auto"]


def segment(
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    *,
    image_id: str | None = None,
    data: bytes | None = None,
    multimask: Multimask = True,
    best_only: bool = False,
) -> Flow[Segmentation]:
    body = {
        "prompts": [prompt.to_json() for prompt in prompts],
        "multimask": multimask,
        "best_only": best_only,
        "mask_format": "rle",
    }
    answer = yield from _by_id_or_upload(endpoint, "/segment", body, image_id, data)
    results = [
        [
            Candidate(
                score=float(c["score"]), area=int(c["area"]), bbox=_bbox(c["bbox"]), rle=c["mask"]
            )
            for c in result["candidates"]
        ]
        for result in answer["results"]
    ]
    return Segmentation(
        image_id=answer["image_id"],
        width=int(answer["width"]),
        height=int(answer["height"]),
        model=str(answer["model"]),
        cached=bool(answer["cached"]),
        results=results,
    )


def everything(
    endpoint: Endpoint,
    *,
    image_id: str | None = None,
    data: bytes | None = None,
    **params: Any,
) -> Flow[Everything]:
    """``params``: the fields of ``POST /segment/everything`` (points_per_side, ...);
    crops (``crop_n_layers``) need the pixels, so the image is sent inline then."""
    body = {**params, "mask_format": "rle"}
    if params.get("crop_n_layers"):
        if data is None:
            raise ValueError("crop_n_layers needs the image, not only its id")
        response = yield endpoint.request(
            "POST", "/segment/everything", json={"image": base64.b64encode(data).decode(), **body}
        )
        raise_for(response)
        answer: dict[str, Any] = response.json()
    else:
        answer = yield from _by_id_or_upload(endpoint, "/segment/everything", body, image_id, data)
    masks = [
        EverythingMask(
            area=int(m["area"]),
            bbox=_bbox(m["bbox"]),
            predicted_iou=float(m["predicted_iou"]),
            stability_score=float(m["stability_score"]),
            point=(float(m["point"][0]), float(m["point"][1])),
            rle=m["mask"],
        )
        for m in answer["masks"]
    ]
    return Everything(
        image_id=answer["image_id"],
        width=int(answer["width"]),
        height=int(answer["height"]),
        model=str(answer["model"]),
        cached=bool(answer["cached"]),
        masks=masks,
    )


def embedding(endpoint: Endpoint, image_id: str) -> Flow[bytes]:
    """The cached embedding as .npy bytes (``numpy.load`` reads them)."""
    response = yield endpoint.request("GET", f"/embeddings/{image_id}")
    raise_for(response)
    return response.content
