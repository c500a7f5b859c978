"""Reading Prometheus text exposition (gateway and Triton ``/metrics``) in tools and tests."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def sample_sum(text: str, name: str, **labels: str) -> float:
    """Sum of every sample called ``name`` whose labels include ``labels``.

    ``text`` may hold several processes' expositions one after another. The
    parser reports a counter without the ``_total`` suffix (Triton's
    ``nv_inference_exec_count``) as ``<name>_total``; ``name`` as exposed finds it.
    """

    def named(family: Metric, sample: Sample) -> bool:
        if sample.name == name:
            return True
        return family.type == "counter" and family.name == name and sample.name == f"{name}_total"

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if named(family, sample) and all(sample.labels.get(k) == v for k, v in labels.items())
    )
