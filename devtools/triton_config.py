"""CPU configurations of the Triton models, derived from the production ``config.pbtxt`` files.

One repository, one ``model.py`` per model: only the configurations differ between
the GPU deployment and CPU runs (laptops, CI). ``python -m devtools.triton_config
--repository model_repository`` writes ``<model>/configs/cpu.pbtxt`` for every model,
for Triton's ``--model-config-name=cpu``.

The models: ``efficientsam`` (ensemble: the image file's bytes in, embedding and size
out) = ``efficientsam_preprocess`` (Python: decode, orient, resize) →
``efficientsam_encoder`` (Python: the ViT encoder); beside them ``efficientsam_decoder``
(Python: the mask decoder with embeddings resident, for ``ESAM_DECODER=triton``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

SOURCE_REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
ENSEMBLE = "efficientsam"
PREPROCESS = "efficientsam_preprocess"
MODEL = "efficientsam_encoder"
DECODER = "efficientsam_decoder"
#: The models the gateway's encodes need, in dependency order.
PIPELINE = (PREPROCESS, MODEL, ENSEMBLE)
DTYPES = {"fp32": mc.TYPE_FP32, "fp16": mc.TYPE_FP16, "uint8": mc.TYPE_UINT8}


def _load(source: Path, name: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse((source / name / "config.pbtxt").read_text(), config)
    return config


def _text(config: mc.ModelConfig) -> str:
    text: str = text_format.MessageToString(config)
    return text


def _on_cpu(config: mc.ModelConfig, count: int) -> None:
    del config.instance_group[:]
    config.instance_group.add(count=count, kind=mc.ModelInstanceGroup.KIND_CPU)


def cpu_config(
    *,
    wire: str = "fp32",
    output: str = "fp32",
    max_batch: int = 2,
    queue_delay_us: int = 5000,
    checkpoint: str | None = None,
    source: Path = SOURCE_REPOSITORY,
) -> str:
    """The encoder's production config.pbtxt, rewritten for CPU (``checkpoint`` None keeps it)."""
    return _text(_encoder_on_cpu(wire, output, max_batch, queue_delay_us, checkpoint, source))


def _encoder_on_cpu(
    wire: str,
    output: str,
    max_batch: int,
    queue_delay_us: int,
    checkpoint: str | None,
    source: Path,
) -> mc.ModelConfig:
    config = _load(source, MODEL)
    config.max_batch_size = max_batch
    config.input[0].data_type = DTYPES[wire]
    config.output[0].data_type = DTYPES[output]
    _on_cpu(config, 1)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    del config.dynamic_batching.preferred_batch_size[:]
    config.dynamic_batching.preferred_batch_size.extend(
        [b for b in (2, 4, 8, 16, 32) if b <= max_batch]
    )
    if checkpoint is not None:
        config.parameters["checkpoint"].string_value = checkpoint
    config.parameters["precision"].string_value = "fp32"
    return config


def cpu_configs(
    *,
    wire: str = "fp32",
    output: str = "fp32",
    max_batch: int = 2,
    queue_delay_us: int = 5000,
    checkpoint: str | None = None,
    preprocess_instances: int = 2,
    source: Path = SOURCE_REPOSITORY,
    suffix: str = "",
) -> dict[str, str]:
    """CPU configs of the whole pipeline, by model name (each name + ``suffix``).

    The preprocessing output takes the encoder's input dtype (``wire``), the ensemble's
    output the encoder's (``output``); every batch size is the encoder's.
    """
    encoder = _encoder_on_cpu(wire, output, max_batch, queue_delay_us, checkpoint, source)
    preprocess = _load(source, PREPROCESS)
    preprocess.max_batch_size = max_batch
    next(o for o in preprocess.output if o.name == "pixels").data_type = DTYPES[wire]
    _on_cpu(preprocess, preprocess_instances)
    preprocess.parameters["gpu_jpeg_decode"].string_value = "false"
    ensemble = _load(source, ENSEMBLE)
    ensemble.max_batch_size = max_batch
    next(o for o in ensemble.output if o.name == "embeddings").data_type = DTYPES[output]
    for step in ensemble.ensemble_scheduling.step:
        step.model_name += suffix
    for config in (encoder, preprocess, ensemble):
        config.name += suffix
    return {config.name: _text(config) for config in (preprocess, encoder, ensemble)}


def decoder_cpu_config(
    *,
    checkpoint: str | None = None,
    max_batch: int = 8,
    resident_bytes: int = 256 << 20,
    queue_delay_us: int = 2000,
    source: Path = SOURCE_REPOSITORY,
) -> str:
    """The decoder's production config.pbtxt on CPU: one instance, a smaller resident
    cache (``resident_bytes``), ``max_batch`` requests per execution."""
    config = _load(source, DECODER)
    config.max_batch_size = max_batch
    _on_cpu(config, 1)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    config.parameters["resident_bytes"].string_value = str(resident_bytes)
    if checkpoint is not None:
        config.parameters["checkpoint"].string_value = checkpoint
    return _text(config)


def gpu_configs(
    *, checkpoint: str, max_batch: int = 32, source: Path = SOURCE_REPOSITORY
) -> dict[str, str]:
    """The production configs as they are, but for the checkpoint and the batch size."""
    configs = {name: _load(source, name) for name in PIPELINE}
    configs[MODEL].parameters["checkpoint"].string_value = checkpoint
    for config in configs.values():
        config.max_batch_size = max_batch
        # the ensemble has no dynamic batching: touching the field would set it, and it
        # shares a oneof with ensemble_scheduling, which would be cleared
        if config.HasField("dynamic_batching"):
            batching = config.dynamic_batching
            preferred = [b for b in batching.preferred_batch_size if b <= max_batch]
            del batching.preferred_batch_size[:]
            batching.preferred_batch_size.extend(preferred)
    return {name: _text(config) for name, config in configs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--repository",
        type=Path,
        default=SOURCE_REPOSITORY,
        help="model repository to read and to write <model>/configs/cpu.pbtxt into",
    )
    parser.add_argument("--wire", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args(argv)
    configs = cpu_configs(wire=args.wire, source=args.repository)
    for name, text in configs.items():
        out = args.repository / name / "configs" / "cpu.pbtxt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(out)
    out = args.repository / DECODER / "configs" / "cpu.pbtxt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(decoder_cpu_config(source=args.repository))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
