#!/usr/bin/env bash
# One-shot GPU benchmark (bench/gpu.py): the model at every precision and batch, then
# tritonserver with the production GPU configuration, driven with JPEG bytes.
#
#   bench/gpu.sh              on a machine with one NVIDIA GPU (< 8 minutes)
#   bench/gpu.sh --dry-run    the same path on the CPU (< 2 minutes; runs in CI)
#
# Python: ./.venv when it exists (make install), else $PYTHON or python3 with torch
# (a CUDA build on a GPU machine). Missing packages are installed without network from
# wheels in ./.whl/ when that folder exists (nvidia-pytriton, tritonclient, pillow,
# opencv-python-headless, pycocotools, httpx, pydantic-settings, ...), else from the index.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=${PYTHON:-python3}
    # pytriton is looked up, not imported: only its tritonserver is used
    if ! "$PY" -c "import importlib.util as u, tritonclient, PIL, cv2, pycocotools, httpx, pydantic_settings; assert u.find_spec('pytriton')" 2>/dev/null; then
        if [ -d .whl ]; then
            "$PY" -m pip install --quiet --no-index --find-links .whl --no-deps .whl/*.whl
        else
            "$PY" -m pip install --quiet "nvidia-pytriton==0.7.0" "tritonclient[grpc]" pillow \
                "opencv-python-headless<4.12" pycocotools httpx pydantic-settings platformdirs
        fi
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu.py "$@"
