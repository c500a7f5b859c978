"""Triton Python backend: the EfficientSAM mask decoder beside resident embeddings.

Each request names one image (the request parameter ``image``: the gateway's model id,
then whatever names the embedding: image id and record dtype) and carries its prompts:
``points`` ``[1, N, P, 2]`` and ``labels`` ``[1, N, P]`` in the 1024×1024 model frame,
``image_size`` ``[1, 2]`` (height, width of the original image) and, only when the
decoder does not hold the image, ``embedding`` ``[1, 256, 64, 64]`` (FP16; or, from a
gateway that caches int8, ``embedding_int8`` with its per-channel ``embedding_scales``
``[1, 256]``, kept so on the device and dequantised only as the forward pass's input).
With the parameter ``edges`` (a JSON object of ``service.core.edges.EdgeParams``) the
request asks for zero-shot edge detection on the image instead (``/edges``; its points
are not used): it answers the edge map ``edges`` ``[1, H, W]``, ``edge_counts``
(candidates, masks after NMS) and ``edge_seconds`` (decode, NMS, edges, thinning), and
runs on its own, not in the execution's forward pass. The parameter ``candidates`` says
which masks come back: ``multimask`` (the three candidates), ``single`` (the single-mask
output) or ``best`` (the best of the three by predicted IoU). The model id must name
this decoder's checkpoint (variant and SHA-256 digest, as the gateway's model id does):
a request from a gateway serving another checkpoint gets an error naming both, and one
with the parameter ``identity`` answers ``status`` 2 (same checkpoint) or 3 (another)
and its ``model`` without decoding (the gateway's readiness probe).

Embeddings stay on this instance's device in a bytes-bounded LRU (the config parameter
``resident_bytes``); a request without an embedding for an image not held answers
``status`` 1 ("not resident", an answer, not an error) and the gateway repeats it with
the embedding. One execution runs one forward pass over every prompt of every request
(the embeddings gathered per prompt), then per request on the device: bicubic upsampling
to the original size, threshold, COCO's column-major run lengths, areas. Only scores,
run lengths (``rle_lengths`` per candidate, ``rle_counts`` concatenated) and, when asked
for as an output, the low-resolution logits go back; candidates come best first. A
malformed request gets its own ``TritonError``; a batch that fails as a whole (out of
memory) is retried request by request, so one request never fails the others.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from service.core.edges import EDGE_STEPS, EdgeParams, edge_map
from service.core.embedding import CHANNELS, EMBEDDING_SHAPE
from service.core.everything import Crop
from service.errors import CheckpointError
from service.model import Candidates, load_named, pad_prompts, ranked_candidates, weights_id
from service.model.masks import run_lengths, upsample_masks

NOT_RESIDENT = 1
#: the answers to an identity probe (request parameter "identity"), with output "model"
SAME_MODEL, OTHER_MODEL = 2, 3
CANDIDATES = get_args(Candidates)


@dataclass(frozen=True)
class Held:
    """One image's embedding on the device: FP16 values, or int8 values with their scales."""

    values: torch.Tensor  # [256, 64, 64]
    scales: torch.Tensor | None = None  # [256], int8 values only

    @property
    def nbytes(self) -> int:
        scales = 0 if self.scales is None else self.scales.numel() * self.scales.element_size()
        return self.values.numel() * self.values.element_size() + scales

    def floats(self) -> torch.Tensor:
        """The decoder's input (a transient: nothing float is kept beside int8 values)."""
        if self.scales is None:
            return self.values.float()
        return self.values.float().mul_(self.scales[:, None, None])


class Resident:
    """Embeddings on the device, least recently used evicted first, bounded in bytes."""

    def __init__(self, capacity_bytes: int, metrics: dict[str, Any]) -> None:
        self.capacity = capacity_bytes
        self._items: OrderedDict[str, Held] = OrderedDict()
        self.bytes = 0
        self._metrics = metrics

    def get(self, key: str) -> Held | None:
        found = self._items.get(key)
        if found is None:
            self._metrics["misses"].increment(1)
            return None
        self._items.move_to_end(key)
        self._metrics["hits"].increment(1)
        return found

    def put(self, key: str, embedding: Held) -> None:
        size = embedding.nbytes
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        while self._items and self.bytes + size > self.capacity:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.nbytes
            self._metrics["evictions"].increment(1)
        if size <= self.capacity:
            self._items[key] = embedding
            self.bytes += size
        self._metrics["bytes"].set(self.bytes)
        self._metrics["images"].set(len(self._items))


@dataclass
class _Job:
    index: int  # the request's place in the execution
    embedding: Held
    points: torch.Tensor  # [N, P, 2]
    labels: torch.Tensor  # [N, P]
    height: int
    width: int
    candidates: Candidates
    logits_wanted: bool
    edges: EdgeParams | None = None  # an edge request: the edge map instead of masks


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        checkpoint = os.environ.get("ESAM_CHECKPOINT") or params.get("checkpoint", "")
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
        try:
            model = load_named(checkpoint, params.get("variant", "ti"))
        except CheckpointError as exc:
            raise pb_utils.TritonModelException(
                f"efficientsam_decoder: {exc}; set the 'checkpoint' parameter in config.pbtxt or "
                "ESAM_CHECKPOINT"
            ) from exc
        self.model = model.to(self.device).eval()
        # the model id the gateway keys its cache with starts with the weights' id: a click
        # for another model's embedding is refused, not decoded with these weights
        self.identity = weights_id(model.config.variant, checkpoint) + "-"
        self.max_points = model.config.max_points
        self.max_prompts = int(params.get("max_prompts_per_execution", "256"))
        self.max_prompts_per_request = int(params.get("max_prompts_per_request", "64"))
        labels = {"model": args["model_name"], "instance": args["model_instance_name"]}
        # the families must outlive their metrics: both are kept
        self.metric_families = {
            name: pb_utils.MetricFamily(
                name=f"esam_decoder_resident_{name}", description=description, kind=kind
            )
            for name, description, kind in (
                ("bytes", "Bytes of embeddings resident", pb_utils.MetricFamily.GAUGE),
                ("images", "Embeddings resident", pb_utils.MetricFamily.GAUGE),
                ("hits", "Requests whose image was resident", pb_utils.MetricFamily.COUNTER),
                ("misses", "Requests whose image was not", pb_utils.MetricFamily.COUNTER),
                ("evictions", "Embeddings evicted for room", pb_utils.MetricFamily.COUNTER),
            )
        }
        self.metrics = {
            name: family.Metric(labels=labels) for name, family in self.metric_families.items()
        }
        self.resident = Resident(int(params.get("resident_bytes", str(8 << 30))), self.metrics)
        self.edges_memory = int(params.get("edges_memory_bytes", str(1 << 30)))

    # --- one request -------------------------------------------------------------------

    def _job(self, index: int, request: Any) -> _Job | Any:
        """The request's work, or its own answer (not resident, or an error)."""
        try:
            parameters = json.loads(request.parameters() or "{}")
        except ValueError:
            return _error("parameters are not JSON")
        key = parameters.get("image")
        candidates = parameters.get("candidates", "multimask")
        if not isinstance(key, str) or not key:
            return _error("the request parameter 'image' (model id, image id, dtype) is missing")
        if candidates not in CANDIDATES:
            return _error(f"candidates must be one of {', '.join(CANDIDATES)}")
        edges = None
        if "edges" in parameters:
            try:
                edges = EdgeParams(**json.loads(parameters["edges"]))
            except (TypeError, ValueError) as exc:
                return _error(f"edges: {exc}")
        model_id = key.split("/", 1)[0]
        same = model_id.startswith(self.identity)
        if parameters.get("identity"):  # the gateway's readiness probe: an answer either way
            return _status(SAME_MODEL if same else OTHER_MODEL, model=self.identity)
        if not same:
            return _error(
                f"model mismatch: the gateway serves {model_id}, this decoder holds "
                f"{self.identity}* (point both at the same checkpoint)"
            )
        points = _input(request, "points")
        labels = _input(request, "labels")
        size = _input(request, "image_size")
        if points is None or labels is None or size is None:
            return _error("points, labels and image_size are required")
        if points.ndim != 4 or points.shape[0] != 1 or points.shape[-1] != 2:
            return _error(f"points must be [1, N, P, 2], got {list(points.shape)}")
        n, p = points.shape[1], points.shape[2]
        if tuple(labels.shape) != (1, n, p):
            return _error(f"labels must be [1, {n}, {p}], got {list(labels.shape)}")
        if not 1 <= n <= self.max_prompts_per_request or not 1 <= p <= self.max_points:
            return _error(
                f"1 to {self.max_prompts_per_request} prompts of 1 to {self.max_points} points"
            )
        if not bool(torch.isfinite(points).all()):
            return _error("points contain NaN or infinity")
        if size.numel() != 2 or int(size.min()) < 1:
            return _error("image_size must be [1, 2]: height, width >= 1")
        height, width = (int(v) for v in size.reshape(-1))
        given = self._given(request)
        if isinstance(given, Held):
            embedding = given
            self.resident.put(key, embedding)
        elif given is not None:
            return given  # the error about the embedding sent
        else:
            found = self.resident.get(key)
            if found is None:
                return _status(NOT_RESIDENT)
            embedding = found
        return _Job(
            index=index,
            embedding=embedding,
            points=points[0],
            labels=labels[0],
            height=height,
            width=width,
            candidates=candidates,
            logits_wanted="low_res_logits" in request.requested_output_names(),
            edges=edges,
        )

    def _given(self, request: Any) -> Held | Any:
        """The embedding the request carries (on the device), its error, or None."""
        dense = _input(request, "embedding")
        values = _input(request, "embedding_int8")
        scales = _input(request, "embedding_scales")
        if dense is not None:
            if values is not None or scales is not None:
                return _error("send embedding or embedding_int8 with its scales, not both")
            if tuple(dense.shape) != EMBEDDING_SHAPE:
                return _error(f"embedding must be [1, 256, 64, 64], got {list(dense.shape)}")
            return Held(dense[0].to(self.device, torch.float16))  # a copy: inputs are freed
        if values is None and scales is None:
            return None
        if values is None or scales is None:
            return _error("embedding_int8 and embedding_scales come together")
        if tuple(values.shape) != EMBEDDING_SHAPE or tuple(scales.shape) != (1, CHANNELS):
            return _error(
                f"embedding_int8 must be [1, 256, 64, 64] and embedding_scales [1, {CHANNELS}], "
                f"got {list(values.shape)} and {list(scales.shape)}"
            )
        if not bool(torch.isfinite(scales).all()) or bool((scales <= 0).any()):
            return _error("embedding_scales must be positive and finite")
        return Held(values[0].to(self.device), scales[0].to(self.device, torch.float32))

    # --- the execution -----------------------------------------------------------------

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        jobs: list[_Job] = []
        for index, request in enumerate(requests):
            try:
                job = self._job(index, request)
            except Exception as exc:  # this request's own error, never the batch's
                job = _error(f"request failed: {exc}")
            if isinstance(job, _Job) and job.edges is not None:
                responses[index] = self._edges(job, job.edges)
            elif isinstance(job, _Job):
                jobs.append(job)
            else:
                responses[index] = job
        group: list[_Job] = []
        for job in jobs:  # at most max_prompts per forward pass
            if group and sum(len(j.points) for j in group) + len(job.points) > self.max_prompts:
                self._run_group(group, responses)
                group = []
            group.append(job)
        if group:
            self._run_group(group, responses)
        return responses

    def _edges(self, job: _Job, params: EdgeParams) -> Any:
        """Zero-shot edge detection on the resident embedding (``service.core.edges``):
        the map ``[1, H, W]``, the candidate and mask counts, each step's seconds."""
        try:
            crop = Crop((0, 0, job.width, job.height), job.embedding.floats()[None])
            found = edge_map(
                self.model,
                [crop],
                job.width,
                job.height,
                params,
                memory_budget_bytes=self.edges_memory,
            )
        except Exception as exc:  # this request's own error (e.g. out of memory)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return _error(f"edge detection failed: {exc}")
        seconds = [found.seconds.get(step, 0.0) for step in EDGE_STEPS]
        outputs = [
            pb_utils.Tensor("status", np.zeros((1, 1), dtype=np.int32)),
            pb_utils.Tensor("edges", found.strength[None]),
            pb_utils.Tensor(
                "edge_counts", np.array([[found.candidates, found.masks]], dtype=np.int32)
            ),
            pb_utils.Tensor("edge_seconds", np.array([seconds], dtype=np.float32)),
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def _run_group(self, group: list[_Job], responses: list[Any]) -> None:
        try:
            for job, answer in zip(group, self._decode(group), strict=True):
                responses[job.index] = answer
        except Exception:  # e.g. out of memory: each request on its own
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            for job in group:
                try:
                    responses[job.index] = self._decode([job])[0]
                except Exception as exc:  # this request's own error
                    responses[job.index] = _error(f"decoding failed: {exc}")

    def _decode(self, group: list[_Job]) -> list[Any]:
        """One forward pass over every prompt of the group, then each request's masks."""
        # every request's prompts padded to the same length, so that they form one batch
        padded = [pad_prompts(j.points.float(), j.labels.float(), self.max_points) for j in group]
        points = torch.cat([p for p, _ in padded]).to(self.device)
        labels = torch.cat([lab for _, lab in padded]).to(self.device)
        owners = torch.cat(
            [torch.full((len(j.points),), i, dtype=torch.int64) for i, j in enumerate(group)]
        ).to(self.device)
        with torch.inference_mode():
            images = torch.stack([j.embedding.floats() for j in group])
            logits, iou = self.model.decode_all(images[owners], points, labels)
            answers = []
            first = 0
            for job in group:
                n = len(job.points)
                answers.append(self._masks(job, logits[first : first + n], iou[first : first + n]))
                first += n
        return answers

    def _masks(self, job: _Job, logits: torch.Tensor, iou: torch.Tensor) -> Any:
        """``[N, 4, 256, 256]`` logits of one request → its response."""
        logits, iou = ranked_candidates(logits, iou, job.candidates)
        n, k = iou.shape
        masks = upsample_masks(logits, job.height, job.width).reshape(n * k, job.height, job.width)
        lengths, counts = run_lengths(masks)
        outputs = [
            pb_utils.Tensor("status", np.zeros((1, 1), dtype=np.int32)),
            pb_utils.Tensor("scores", iou.float().cpu().numpy()[None]),
            pb_utils.Tensor("rle_lengths", lengths.to(torch.int32).cpu().numpy()[None]),
            pb_utils.Tensor("rle_counts", counts.to(torch.int32).cpu().numpy()[None]),
        ]
        if job.logits_wanted:
            outputs.append(pb_utils.Tensor("low_res_logits", logits.float().cpu().numpy()[None]))
        return pb_utils.InferenceResponse(output_tensors=outputs)


def _input(request: Any, name: str) -> torch.Tensor | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    if tensor.is_cpu():
        return torch.from_numpy(tensor.as_numpy().copy())
    return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).clone()


def _status(status: int, model: str | None = None) -> Any:
    """An answer that carries no masks: not resident, or the identity probe's (with this
    decoder's model id prefix as ``model``)."""
    empty = np.zeros((1, 0), dtype=np.int32)
    outputs = [
        pb_utils.Tensor("status", np.full((1, 1), status, dtype=np.int32)),
        pb_utils.Tensor("scores", np.zeros((1, 0, 0), dtype=np.float32)),
        pb_utils.Tensor("rle_lengths", empty),
        pb_utils.Tensor("rle_counts", empty),
    ]
    if model is not None:
        outputs.append(pb_utils.Tensor("model", np.array([[model.encode()]], dtype=np.object_)))
    return pb_utils.InferenceResponse(output_tensors=outputs)


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(
            f"efficientsam_decoder: {message}", pb_utils.TritonError.INVALID_ARG
        )
    )
