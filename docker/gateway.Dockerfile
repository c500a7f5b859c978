# syntax=docker/dockerfile:1.7
# The gateway: FastAPI + the mask decoder on CPU. Also the one-shot weights downloader.
#   docker build -f docker/gateway.Dockerfile -t efficientsam-gateway .
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# CPU build of PyTorch (the decoder runs on CPU); pinned like the Makefile's.
RUN python -m venv /opt/venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install . && python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ESAM_HOST=0.0.0.0 \
    ESAM_PORT=8080 \
    ESAM_WEIGHTS_DIR=/weights
RUN groupadd --gid 10001 esam \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin esam \
    && mkdir /weights && chown 10001:10001 /weights
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["python", "-m", "service"]
