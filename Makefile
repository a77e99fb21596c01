# Two commands: `make test` and `make demo`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TRT_STUBS := tensorrt-stubs==10.13.0.35.1

$(BIN)/odelt-export: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# `rtx`: TensorRT-RTX, whose builder makes real engines without a GPU (the test suite builds some).
	# `trt` (TensorRT) cannot install here and `gpu` (onnxruntime-gpu) would replace onnxruntime: not installed.
	$(BIN)/pip install -q -c constraints.txt -e '.[test,rtx,openvino]'
	# TensorRT type stubs for tools/make_trt_stubs.py. --no-deps: the wheel depends on `tensorrt`,
	# which cannot install here (so it cannot sit in the `test` extra); --target: installed into
	# site-packages it would leave an empty `tensorrt` namespace package that imports fine.
	# Optional ("-"): the patched stub is committed in typings/, so offline installs still test.
	-$(BIN)/pip install -q --no-deps --target $(VENV)/trt-stubs $(TRT_STUBS)
	touch $@

# Regenerate typings/tensorrt/__init__.pyi (commit the result).
.PHONY: trt-stubs
trt-stubs: $(BIN)/odelt-export
	$(BIN)/pip install -q --no-deps --upgrade --target $(VENV)/trt-stubs $(TRT_STUBS)
	$(BIN)/python tools/make_trt_stubs.py

# The serving environment (odelt/serving/server.py): the tritonserver inside nvidia-pytriton, whose
# Python-backend stub needs numpy < 2, and odelt-export without torch (the sampler model runs the
# numpy runtime). Optional ("-" in `test`): offline, the serving tests skip and the rest still runs.
# OpenVINO for the engine mode over `--backend openvino`: the same pin as pyproject's `openvino` extra
# (tests/test_packaging.py checks they agree); it needs only numpy, so numpy stays < 2 and torch stays out.
SERVE := .venv-serve
PYTRITON := nvidia-pytriton==0.7.0
OPENVINO := openvino==2026.4.1

$(SERVE)/.ready: pyproject.toml constraints.txt Makefile
	$(PY) -m venv $(SERVE)
	$(SERVE)/bin/pip install -q -c constraints.txt "numpy<2" $(PYTRITON) onnxruntime $(OPENVINO)
	$(SERVE)/bin/pip install -q --no-deps -e .
	touch $@

.PHONY: serve-env
serve-env: $(SERVE)/.ready

# `make test` is what CI runs: every test but the `slow` ones (pyproject.toml deselects those), the
# `integration` runs (demo, CLI pipelines, real TensorRT-RTX builds, `bench/run.py --smoke`) included;
# `gpu` tests skip without a GPU. `make test-fast`: the same without the integration runs (minutes
# less, for editing). `make test-gpu` on a GPU machine; `make test-slow` for the DiT-B/2 scale run.
.PHONY: test test-fast test-gpu test-slow demo clean
test: $(BIN)/odelt-export
	-$(MAKE) serve-env
	$(BIN)/python -m pytest -m "not slow"

test-fast: $(BIN)/odelt-export
	$(BIN)/python -m pytest -m "not slow and not integration"

test-gpu: $(BIN)/odelt-export
	$(BIN)/python -m pytest -m gpu

test-slow: $(BIN)/odelt-export
	$(BIN)/python -m pytest -m slow

demo: $(BIN)/odelt-export
	$(BIN)/odelt-export demo

clean:
	rm -rf $(VENV) $(SERVE) build *.egg-info
