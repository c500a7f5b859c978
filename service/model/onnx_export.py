"""ONNX export of the encoder (dynamic batch) and decoder (dynamic prompt count).

``python -m service.model.onnx_export --checkpoint ckpt.pt --encoder enc.onnx --decoder dec.onnx``
writes either or both (``make onnx`` writes the encoder of the Triton ``onnxruntime``
model, ``model_repository/efficientsam_encoder_onnx/1/model.onnx``).

* encoder: ``pixels`` ``[B, 3, 1024, 1024]`` RGB in [0, 1] (resized, not
  normalised; float32, or float16 with ``--input-dtype fp16``) → ``embeddings``
  float32 ``[B, 256, 64, 64]`` — the same tensor names as the Triton model;
* decoder: ``image_embeddings`` ``[1, 256, 64, 64]``, ``points`` ``[N, 6, 2]``
  (model frame, padded with -1), ``labels`` ``[N, 6]`` (padding -1) →
  ``low_res_logits`` ``[N, 4, 256, 256]`` and ``iou_predictions`` ``[N, 4]``
  (token 0 = single-mask output, 1-3 = multimask).
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from service.model.checkpoint import load_model, random_model
from service.model.config import VARIANTS
from service.model.efficient_sam import EfficientSam

OPSET = 18
ENCODER_INPUTS = ("pixels",)
ENCODER_OUTPUTS = ("embeddings",)
DECODER_INPUTS = ("image_embeddings", "points", "labels")
DECODER_OUTPUTS = ("low_res_logits", "iou_predictions")


class EncoderGraph(nn.Module):
    def __init__(self, model: EfficientSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model.embed(pixels.float())


class DecoderGraph(nn.Module):
    def __init__(self, model: EfficientSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeddings: Tensor, points: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.model.prompt_encoder(points, labels)
        logits, iou = self.model.mask_decoder(
            embeddings, self.model.prompt_encoder.dense_positions(), tokens
        )
        return logits, iou


def export_encoder(
    model: EfficientSam, path: Path, max_batch: int = 64, input_dtype: str = "fp32"
) -> Path:
    size = model.config.img_size
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dtype = torch.float16 if input_dtype == "fp16" else torch.float32
    program = torch.onnx.export(
        EncoderGraph(model).eval(),
        (torch.rand(2, 3, size, size).to(dtype),),
        input_names=list(ENCODER_INPUTS),
        output_names=list(ENCODER_OUTPUTS),
        dynamic_shapes=({0: batch},),
        dynamo=True,
        opset_version=OPSET,
        verbose=False,
    )
    assert program is not None
    program.save(str(path))
    return path


def export_decoder(model: EfficientSam, path: Path, max_prompts: int = 1024) -> Path:
    cfg = model.config
    prompts = torch.export.Dim("prompts", min=1, max=max_prompts)
    example = (
        torch.randn(1, cfg.embed_dim, cfg.embedding_grid, cfg.embedding_grid),
        torch.rand(2, cfg.max_points, 2) * cfg.img_size,
        torch.ones(2, cfg.max_points),
    )
    with warnings.catch_warnings():
        # points and labels share the one "prompts" axis on purpose
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        program = torch.onnx.export(
            DecoderGraph(model).eval(),
            example,
            input_names=list(DECODER_INPUTS),
            output_names=list(DECODER_OUTPUTS),
            dynamic_shapes=({}, {0: prompts}, {0: prompts}),
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
        )
    assert program is not None
    program.save(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export EfficientSAM to ONNX.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path)
    source.add_argument("--random", choices=VARIANTS, help="random weights (testing only)")
    parser.add_argument("--encoder", type=Path, help="where to write the encoder")
    parser.add_argument("--decoder", type=Path, help="where to write the decoder")
    parser.add_argument(
        "--input-dtype",
        choices=("fp32", "fp16"),
        default="fp32",
        help="dtype of the encoder's pixels input (the Triton model uses fp16)",
    )
    args = parser.parse_args(argv)
    if not (args.encoder or args.decoder):
        parser.error("give --encoder and/or --decoder")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model = load_model(args.checkpoint) if args.checkpoint else random_model(args.random)
    with torch.no_grad():
        if args.encoder:
            args.encoder.parent.mkdir(parents=True, exist_ok=True)
            print(export_encoder(model, args.encoder, input_dtype=args.input_dtype))
        if args.decoder:
            args.decoder.parent.mkdir(parents=True, exist_ok=True)
            print(export_decoder(model, args.decoder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
