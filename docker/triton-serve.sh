#!/bin/sh
# How Triton is started everywhere (image, compose, Kubernetes): the gateway's pipeline
# and the click decoder (efficientsam_decoder, for ESAM_DECODER=triton)
# are loaded explicitly, so a model whose files are absent (efficientsam_encoder_onnx
# before `make onnx`) is never loaded and cannot stop a fresh deployment.
# Extra arguments are passed on (e.g. --model-config-name=cpu).
#   TRITON_MODELS overrides the list, e.g. to load the ONNX encoder too.
set -eu
models=${TRITON_MODELS:-efficientsam_preprocess efficientsam_encoder efficientsam efficientsam_decoder}
set -- --model-control-mode=explicit "$@"
for model in $models; do
    set -- "$@" "--load-model=$model"
done
exec "${TRITONSERVER:-tritonserver}" \
    --model-repository="${TRITON_MODEL_REPOSITORY:-/models}" \
    --exit-on-error=true --strict-readiness=true "$@"
