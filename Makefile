# Developer entry points. Every target sets up .venv itself (scripts/setup_venv.sh is idempotent).
VENV ?= .venv
LEROBOT_VENV ?= .venv-lerobot
PY := $(abspath $(VENV))/bin/python
PYTEST_ARGS ?=

.PHONY: venv venv-lerobot demo adapt-demo test test-core bench lint clean

venv:
	@scripts/setup_venv.sh $(VENV)

## Second venv with lerobot 0.4.4 (torch 2.14.1 + torchvision + torchcodec, ~5.6 GB, ~3 min):
## `make test` then also runs the LeRobot-API tests of procvlm-label in it
venv-lerobot:
	@scripts/setup_lerobot_venv.sh $(LEROBOT_VENV)

## Live demo: camera stream -> monitor node -> printed Progress, plot in out/demo/
demo: venv
	$(PY) scripts/demo.py --out out/demo

## One-shot adaptation on the demo model: demonstrations of a held-out task family ->
## annotate -> dataset -> LoRA train -> procvlm-eval before/after on 20 held-out episodes
adapt-demo: venv
	$(PY) -m procvlm_ros.adapt.demo --out out/adapt-demo

## Full test suite (core, backends, media, ROS nodes in separate processes, offline CLI)
test: venv
	cd procvlm_ros && PROCVLM_REQUIRE_ROS=1 \
	  PROCVLM_LEROBOT_PYTHON=$(abspath $(LEROBOT_VENV))/bin/python $(PY) -m pytest test -q -p no:cacheprovider $(PYTEST_ARGS)

## Only the ROS-free core, without the tests marked slow (markers: procvlm_ros/setup.cfg)
test-core: venv
	cd procvlm_ros && $(PY) -m pytest test/core -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

## Benchmark every available backend on the tiny model, then speculative decoding on the demo
## and tiny models (see docs/export.md)
bench: venv
	PATH=$(abspath $(VENV))/bin:$$PATH bench/tiny_cpu.sh
	PATH=$(abspath $(VENV))/bin:$$PATH bench/speculation_cpu.sh

## ruff with the ament-compatible settings in procvlm_ros/pyproject.toml
lint: venv
	cd procvlm_ros && $(abspath $(VENV))/bin/ruff check procvlm_ros test launch

clean:
	rm -rf build out $(VENV) $(LEROBOT_VENV)
