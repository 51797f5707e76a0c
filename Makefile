# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The C++ host post-processing extension (setup.py) is built by the install; rebuilt here when its sources change.
NATIVE := $(VENV)/.native
NATIVE_SRC := setup.py runtime/cpp/src/postprocess.cpp $(wildcard runtime/cpp/python/*.cpp runtime/cpp/include/retina/*.hpp)

.PHONY: demo test lint setup clean gpu-check cpp-deps cpp-test browser-deps

setup: $(NATIVE) cpp-deps browser-deps

# torch is installed pinned first: an unpinned resolve would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP) $(NATIVE)

$(NATIVE): $(STAMP) $(NATIVE_SRC)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: $(NATIVE)
	$(VENV)/bin/retina-deploy demo --out demo-out

test: $(NATIVE) cpp-test browser-deps
	$(PY) -m pytest -q --durations=15

# C++ runtime (runtime/cpp): its Debian packages (apt only when one is missing), then its builds and ctest
# (core and C API under ASan + UBSan, Release with the install test). Outputs in .cpp-build/.
cpp-deps:
	runtime/cpp/scripts/install-deps.sh

# Chromium for the demo report's headless screenshot test (tests/retina_deploy/demo/test_demo_report.py), via apt when
# missing (root, or sudo); without apt, or when apt fails, that one test is skipped and nothing else changes.
SKIP_BROWSER := echo "chromium not installed: the demo report's browser test will be skipped"
browser-deps:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then $(SKIP_BROWSER) "(no apt-get)"; exit 0; fi; \
	SUDO=; if [ "$$(id -u)" -ne 0 ]; then SUDO=sudo; fi; \
	echo "installing chromium (apt)"; \
	{ $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } \
	  || $(SKIP_BROWSER) "(apt-get failed)"

cpp-test: cpp-deps $(STAMP)
	VENV=$(VENV) runtime/cpp/scripts/test.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Every GPU path in a few minutes, one JSON report (README "GPU check"). It needs no .venv: on a GPU machine it runs
# with the interpreter that has torch (PYTHON=...), after `pip install --no-deps -e .`. GPU_CHECK_ARGS=--quick etc.
GPU_CHECK_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_CHECK_PY) -m retina_deploy.gpucheck --out gpu-check-out --overwrite $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) demo-out gpu-check-out .pytest_cache .cpp-build runtime/post/_native*.so
