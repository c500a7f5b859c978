"""A Triton Python model with the encoder's interface that answers at once (benchmarks only).

``LocalTriton(stand_in_encoder=True)`` puts it in place of ``efficientsam_encoder``'s
``model.py``: the same config (inputs, outputs, dtypes, batching), the real preprocessing
before it, and an embedding of zeros after it. On this machine's CPU a real encode takes
1.5 s, and over that time the gateway's idle timers cost more CPU than the request itself;
with the stand-in a cold ``/embed`` takes about as long as on a GPU, so ``bench/triton.py``
measures the gateway's own CPU per new image, not its idle share.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from service.core.embedding import EMBEDDING_SHAPE


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        output = pb_utils.get_output_config_by_name(config, "embeddings")
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "pixels").shape()[0]
            zeros = np.zeros((images, *EMBEDDING_SHAPE[1:]), dtype=self.output_dtype)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("embeddings", zeros)])
            )
        return responses
