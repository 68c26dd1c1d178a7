# Two commands set everything up on a fresh Debian machine with Python 3.11 or 3.12 (PYTHON=python3.12):
#   make serve   venv + install + start the server (lite backend, bundled portrait)
#   make test    venv + install + test packages (Debian and PyPI) + run the tests
#                (behaviour only; `make test-realtime` runs the rate and latency tests)
# Both are idempotent: stamp files make a second run install nothing.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
HOST   ?= 127.0.0.1
PORT   ?= 8080
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=
# Never reach a model hub; silence mediapipe's native logging.
export HF_HUB_OFFLINE := 1
export GLOG_minloglevel := 2

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEB_TEST_PACKAGES := chromium chromium-driver espeak-ng sox
# The first command each Debian package provides, to tell whether it is installed.
DEB_TEST_COMMANDS := chromium chromedriver espeak-ng sox
# For the TURN test (tests/test_turn.py, which also needs root for network namespaces): installed where
# possible; where not, that test skips and says why.
DEB_TURN_PACKAGES := coturn iproute2
DEB_TURN_COMMANDS := turnserver ip

# The voice-agent integrations' tests run in an environment of their own (scripts/agent_requirements.py says why).
AGENTS_VENV ?= .venv-agents
AGENTS_PY   := $(AGENTS_VENV)/bin/python
STAMP_AGENTS := $(AGENTS_VENV)/.stamp-install

STAMP_BASE := $(VENV)/.stamp-install
STAMP_TEST := $(VENV)/.stamp-test
STAMP_DEB  := $(VENV)/.stamp-deb

.PHONY: serve test test-agents test-realtime lint install install-test install-agents deb clean distclean train-tiny train-lite-motion

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (needs Python 3.11 or 3.12)"; exit 2; }
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the CPU wheel on these machines (a range would pull a CUDA build);
# mediapipe goes in with --no-deps, its few needs are in pyproject (see docs/platform.md).
$(STAMP_BASE): pyproject.toml | $(PY)
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e .
	$(PIP) install --no-deps "mediapipe==0.10.21" "protobuf>=4.25.3,<5"
	@touch $@

$(STAMP_TEST): $(STAMP_BASE) pyproject.toml
	$(PIP) install -e ".[test]"
	@touch $@

$(STAMP_DEB):
	@missing=""; for c in $(DEB_TEST_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for tests (missing:$$missing)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEB_TEST_PACKAGES); \
	fi
	@missing=""; for c in $(DEB_TURN_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the TURN test (missing:$$missing)"; \
		{ $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEB_TURN_PACKAGES); } \
			|| echo "warning: could not install $(DEB_TURN_PACKAGES); tests/test_turn.py will skip"; \
	fi
	@mkdir -p $(VENV) && touch $@

# After the main install: both write the package's egg-info.
$(STAMP_AGENTS): pyproject.toml scripts/agent_requirements.py | $(STAMP_BASE)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (needs Python 3.11 or 3.12)"; exit 2; }
	[ -x $(AGENTS_PY) ] || $(PYTHON) -m venv $(AGENTS_VENV)
	$(AGENTS_PY) scripts/agent_requirements.py > $(AGENTS_VENV)/requirements.txt
	$(AGENTS_PY) -m pip --disable-pip-version-check -q install -r $(AGENTS_VENV)/requirements.txt
	$(AGENTS_PY) -m pip --disable-pip-version-check -q install --no-deps -e .
	@touch $@

install: $(STAMP_BASE)
install-test: $(STAMP_TEST) $(STAMP_DEB)
install-agents: $(STAMP_AGENTS)
deb: $(STAMP_DEB)

serve: $(STAMP_BASE)
	$(VENV)/bin/emo-stream serve --config $(CONFIG) --host $(HOST) --port $(PORT)

# `make test` asserts behaviour only, so a busy machine does not turn it red. Rates, latencies and A/V offsets
# on the real clock are the `realtime` tests: `make test-realtime`, on a quiet machine (CI runs both).
test: install-test install-agents
	$(PY) -m pytest -m "not realtime and not compile" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-agents

# pipecat and LiveKit Agents drive a server that runs from the main environment.
test-agents: install-test install-agents
	EMO_STREAM_AGENT_TESTS=1 EMO_STREAM_SERVER_PYTHON=$(abspath $(PY)) $(AGENTS_PY) -m pytest tests/agents $(PYTEST_ARGS)

test-realtime: install-test
	$(PY) -m pytest -m "realtime or compile" $(PYTEST_ARGS)

# A small EMO model trained here on 2 CPU cores (< 60 min; not part of `make test`): lite-teacher videos ->
# data prepare -> autoencoder -> stage 1 -> stage 2 -> distill -> held-out metrics. Checkpoint in
# runs/train-tiny/checkpoint; e.g. TRAIN_TINY_ARGS="--seed 1 --docs".
TRAIN_TINY_ARGS ?=
train-tiny: install-test
	$(PY) scripts/train_tiny.py $(TRAIN_TINY_ARGS)

# The lite animator's learned motion from real talking clips (not in the repository: TALKING defaults to the
# team's folder beside the checkout). Writes the weights the package ships; the held-out speakers are scored.
TALKING ?= ../shared/data/talking
LITE_MOTION_HELD_OUT ?= 03_,10_,13_,16_,22_,21_
LITE_MOTION_OUT ?= emo_stream/assets/lite_motion.safetensors
train-lite-motion: $(STAMP_BASE)
	@[ -d "$(TALKING)" ] || { echo "error: no talking clips at $(TALKING) (set TALKING=DIR, a folder of talking-head videos)"; exit 2; }
	$(PY) -m emo_stream data prepare --videos $(TALKING) --out .cache/talking --size 64
	$(PY) -m emo_stream train-lite-motion --data .cache/talking --out $(LITE_MOTION_OUT) --held-out $(LITE_MOTION_HELD_OUT)

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy emo_stream server

clean:
	rm -rf .pytest_cache .ruff_cache .mypy_cache build *.egg-info
distclean: clean
	rm -rf $(VENV) $(AGENTS_VENV) .cache
