# syntax=docker/dockerfile:1.7
# Triton Inference Server with the EfficientSAM pipeline (Python backends).
# 24.12 = Triton 2.53 on Ubuntu 24.04 with Python 3.12 (NVIDIA's release notes): the
# package needs Python >= 3.11, which 24.10 (Python 3.10) lacks. Locally and in CI the
# tests run Triton 2.51 (nvidia-pytriton 0.7.0); the model configs are the same for both.
#   docker build -f docker/triton.Dockerfile -t efficientsam-triton .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3
FROM ${TRITON_IMAGE}

# Ubuntu 24.04 marks its Python as externally managed; this image is that Python's only user.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
# PyTorch for the container's CUDA 12.6 driver stack (cu124 wheels run on it) and Python 3.12.
RUN pip install --index-url https://download.pytorch.org/whl/cu124 torch==2.5.1 \
    && pip install "numpy<2" "tritonclient[grpc]==2.51.0"

# Only the model package is needed by model.py: install the project without its
# gateway dependencies.
WORKDIR /opt/efficientsam
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-deps . \
    && rm -rf /opt/efficientsam/service

COPY model_repository /models
COPY docker/triton-serve.sh /usr/local/bin/triton-serve
# The CPU configurations for laptops (docker-compose.cpu.yml), derived from the
# production config.pbtxt files by the same code as `make triton` (one dev-tooling script,
# run at build time and removed: the image carries no dev tooling).
COPY devtools/triton_config.py /tmp/triton_config.py
RUN python /tmp/triton_config.py --repository /models \
    && rm /tmp/triton_config.py \
    && chown -R 1000:1000 /models

# triton-server (uid 1000 in the NGC image)
USER 1000:1000
ENV ESAM_CHECKPOINT=/weights/efficient_sam_vitt.pt
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/ready"]
# explicit model control: only the pipeline is loaded (docker/triton-serve.sh)
CMD ["triton-serve"]
