# EfficientSAM serving — every target creates and uses ./.venv on its own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
VARIANT ?= ti

.PHONY: install serve test test-fast chromium lint format weights triton onnx bench-model bench-gateway bench-triton bench-load bench-hostile bench-gpu bench-gpu-dry-run bench-memory bench-failures bench-capacity bench-clicks bench-embedding-dtypes bench-precompute bench-ui-decoder bench-brush-rle bench-priority ui-assets clean

$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# the Python client and `esam` command (their own package, no torch), for the tests
	$(BIN)/python -m pip install --quiet -e ./client
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)  ## run the gateway on the embedded default (in-process encoder, memory cache)
	$(BIN)/python -m service

# the suite runs on TEST_WORKERS processes (pytest-xdist), a test file to each: most of a
# file's time is spent waiting on the servers it starts, which the other files use
TEST_WORKERS ?= 2
test: $(STAMP) chromium ui-assets  ## the whole test suite
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)  ## the inner loop: every test not marked slow (no Triton, Label Studio, browser, gateway process)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# the /docs test drives a real browser: Debian's chromium (Playwright uses it and downloads none)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		echo "chromium not found: installing it from Debian's packages" >&2; \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium >&2; }

# the demo page's optional in-browser decoder: onnxruntime-web's files, pinned by the lockfile
# (with integrity hashes), served under /ui/ort/ when present (ESAM_UI_ASSETS_DIR)
UI_ASSETS := build/ui-assets
UI_LOCK   := service/gateway/ui/assets/package.json service/gateway/ui/assets/package-lock.json
$(UI_ASSETS)/.installed: $(UI_LOCK)
	@command -v npm >/dev/null 2>&1 || { \
		echo "npm not found: installing it from Debian's packages" >&2; \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq npm >&2; }
	mkdir -p $(UI_ASSETS)
	cp $(UI_LOCK) $(UI_ASSETS)/
	cd $(UI_ASSETS) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

ui-assets: $(UI_ASSETS)/.installed  ## onnxruntime-web for the demo page's in-browser decoder

lint: $(STAMP)  ## ruff + mypy (strict)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

weights: $(STAMP)  ## download and verify the official checkpoint (VARIANT=ti|s)
	$(BIN)/python -m service.fetch_weights $(VARIANT)

triton: $(STAMP)  ## local CPU Triton with the encoder (ESAM_CHECKPOINT; TRITON_HTTP_PORT/GRPC_PORT/METRICS_PORT, default 8000-8002)
	$(BIN)/python -m devtools.triton

onnx: $(STAMP)  ## export the encoder for the onnxruntime/TensorRT Triton model (ESAM_CHECKPOINT)
	$(BIN)/python -m service.model.onnx_export --checkpoint "$${ESAM_CHECKPOINT:?set ESAM_CHECKPOINT}" \
		--input-dtype fp16 --encoder model_repository/efficientsam_encoder_onnx/1/model.onnx

bench-model: $(STAMP)  ## encoder/decoder speed against an explicit-softmax fp32 baseline
	$(BIN)/python bench/model.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache

bench-priority: $(STAMP)  ## an annotator's latency beside a bulk precompute and another tenant's flood (local Triton)
	$(BIN)/python bench/priority.py

bench-triton: $(STAMP)  ## throughput/latency vs concurrency through the gateway and directly against Triton
	$(BIN)/python bench/triton.py

bench-load: $(STAMP)  ## annotators against gateway + local Triton + Redis (FAULT=redis|triton to kill one mid-run)
	$(BIN)/python bench/load.py $(if $(FAULT),--fault $(FAULT))

bench-hostile: $(STAMP)  ## hostile inputs: status, latency, peak RSS
	$(BIN)/python bench/hostile.py

bench-gateway: $(STAMP)  ## cache-hit /segment over HTTP against a direct decoder call; cold vs warm /embed
	$(BIN)/python bench/gateway.py

bench-gpu: $(STAMP)  ## one-shot GPU benchmark: model at every precision, Triton end to end (bench/gpu.sh)
	bench/gpu.sh

bench-gpu-dry-run: $(STAMP)  ## the same path on the CPU, small (< 2 minutes; CI runs it)
	bench/gpu.sh --dry-run --out build/bench/gpu-dry-run

bench-memory: $(STAMP)  ## peak memory of decoding a 50 MP PNG and 8 concurrent 12 MP JPEGs, before/after
	$(BIN)/python bench/decode_memory.py

bench-clicks: $(STAMP)  ## gateway CPU per click: local decoder vs efficientsam_decoder in a local Triton
	$(BIN)/python bench/clicks.py

bench-embedding-dtypes: $(STAMP)  ## float32 / float16 / int8 embeddings: Redis bytes, mask IoU, click latency
	$(BIN)/python bench/embedding_dtypes.py

bench-precompute: $(STAMP)  ## esam embed over 200 images at concurrency 1 and 8, then again (nothing sent)
	$(BIN)/python bench/precompute.py

bench-brush-rle: $(STAMP)  ## Label Studio brush RLE of 12 MP masks: vectorised vs label_studio_sdk
	$(BIN)/python bench/brush_rle.py

bench-ui-decoder: $(STAMP) chromium ui-assets  ## demo page: click-to-mask in the browser (WebAssembly) vs /segment
	$(BIN)/python bench/ui_decoder.py

bench-capacity: $(STAMP)  ## capacity table (1k/10k/100k annotators); CHECK=1: predict a local load run and compare
	$(BIN)/python bench/capacity.py $(if $(CHECK),--check)

bench-failures: $(STAMP)  ## hung Triton, overload, Redis down, DELETE across replicas
	$(BIN)/python bench/failure_modes.py
