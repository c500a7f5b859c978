"""The CPU configuration of the encoder model, derived from the production ``config.pbtxt``.

One model, one ``model.py``: only the configuration differs between the GPU
deployment and CPU runs (laptops, CI). ``python -m service.devtools.triton_config
--out model/configs/cpu.pbtxt`` writes it for Triton's ``--model-config-name=cpu``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

SOURCE_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
MODEL = "efficientsam_encoder"
DTYPES = {"fp32": mc.TYPE_FP32, "fp16": mc.TYPE_FP16, "uint8": mc.TYPE_UINT8}


def cpu_config(
    *,
    wire: str = "fp32",
    output: str = "fp32",
    max_batch: int = 2,
    queue_delay_us: int = 5000,
    checkpoint: str | None = None,
    source: Path = SOURCE_REPOSITORY,
) -> str:
    """The production config.pbtxt, rewritten for CPU (``checkpoint`` None keeps it)."""
    config = mc.ModelConfig()
    text_format.Parse((source / MODEL / "config.pbtxt").read_text(), config)
    config.max_batch_size = max_batch
    config.input[0].data_type = DTYPES[wire]
    config.output[0].data_type = DTYPES[output]
    del config.instance_group[:]
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    del config.dynamic_batching.preferred_batch_size[:]
    config.dynamic_batching.preferred_batch_size.extend(
        [b for b in (2, 4, 8, 16, 32) if b <= max_batch]
    )
    if checkpoint is not None:
        config.parameters["checkpoint"].string_value = checkpoint
    config.parameters["precision"].string_value = "fp32"
    text: str = text_format.MessageToString(config)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE_REPOSITORY, help="model repository")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wire", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(cpu_config(wire=args.wire, source=args.source))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
