# webcall — developer and CI entry points (GNU make).
#
#   make serve    set everything up, then run the server on :8080 (ARGS="--port 9000 ...")
#   make test     set everything up, then run the test suite     (PYTEST_ARGS="-k sdp -x")
#   make bench    set up the venv, then load-test the server      (ARGS="--steps 10,50,100")
#   make core     compile the fan-out core (webcall/media/_fanout.so; serve, test and bench do it)
#   make fuzz     the fuzz targets (tests/fuzz) with 100,000 examples each (not part of make test)
#   make soak     1,000 publish/play/stop cycles with faults against a server subprocess (--workers 1, then 2):
#                 RSS/fds/threads/tasks slopes; artifacts/soak/soak-<time>.json (ARGS="--cycles 300 --workers 2")
#   make fuzz-live  mutated SDK messages and UDP garbage while a healthy stream plays (long; a short seeded
#                 run is tests/e2e/test_live_fuzz.py in make test)
#
# serve installs only what serving needs (gcc, nodejs, npm, python3-venv; requirements.txt); test adds the
# browsers (chromium, firefox-esr), GStreamer (webrtcbin, python3-gi) and the test tools (requirements-dev.txt); bench adds requirements-dev.txt.
#
# Set-up steps are stamped, so they re-run only when their inputs change:
#   .venv/.webcall-runtime            <- requirements.txt                       (serve)
#   .venv/.webcall-installed          <- requirements.txt, requirements-dev.txt (test, bench)
#   node_modules/.webcall-installed   <- package.json, package-lock.json
#   webcall/media/_fanout.so          <- webcall/media/fanout.c, ingest.c

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := serve

PYTHON      ?= python3
VENV        ?= .venv
VENV_PY     := $(VENV)/bin/python
VENV_STAMP  := $(VENV)/.webcall-installed
RUNTIME_STAMP := $(VENV)/.webcall-runtime
SDK_STAMP   := node_modules/.webcall-installed
ARGS        ?=
PYTEST_ARGS ?=

# Debian packages needed on the machine: "command:package" (installed if the command is missing) or a bare
# "package" (installed unless dpkg has it installed). apt-get runs only if something is missing.
# SYSTEM_CHECKS is what serving needs (gcc builds the core; node_modules holds the SDK bundle it serves);
# TEST_CHECKS is added for `make test` only: the browsers, and GStreamer's webrtcbin for tests/e2e/test_gstreamer.py
# (driven by Debian's /usr/bin/python3 through python3-gi; python3-websocket is its WCS WebSocket client).
# libavcodec59: Firefox on Linux decodes H264 (its MSE player, tests/browser) through the system FFmpeg.
SYSTEM_CHECKS := gcc:gcc node:nodejs npm:npm
GST_PACKAGES  := gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice \
                 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 python3-gi python3-gst-1.0 python3-websocket
# redis-server: the cluster tests (tests/e2e/test_cluster.py) start their own, on a free port, no persistence.
TEST_CHECKS   := chromium:chromium firefox-esr:firefox-esr libavcodec59 $(GST_PACKAGES) redis-server:redis-server
CC          ?= gcc
CORE_SRC    := webcall/media/fanout.c webcall/media/ingest.c
CORE_HDR    := webcall/media/fanout.h
CORE_LIB    := webcall/media/_fanout.so

.PHONY: serve test bench fuzz soak fuzz-live cluster-figures core venv venv-runtime sdk deps-system deps-test clean help

help:
	@echo "make serve        run the server (ARGS='--port 8080 --public-ip 1.2.3.4')"
	@echo "make test         run the tests  (PYTEST_ARGS='-k name -x')"
	@echo "make bench        viewers per core, first-frame time, added latency (ARGS='--steps 10,50,100')"
	@echo "make fuzz         the fuzz targets with 100,000 examples each (FUZZ_EXAMPLES=N to change; PYTEST_ARGS='-k sdp')"
	@echo "make soak         publish/play/stop cycles with faults; memory, fds, tasks slopes (ARGS='--cycles 1000 --workers 1,2')"
	@echo "make fuzz-live    mutated SDK messages + UDP garbage at a live stream (LIVE_FUZZ_MUTATIONS, LIVE_FUZZ_UDP_SECONDS)"
	@echo "make cluster-figures  relay cost per packet and edge time to first frame (ARGS='--trials 20')"
	@echo "make core         compile the fan-out core (C, loaded with cffi; without it forwarding runs in Python)"
	@echo "make venv         create .venv and install requirements-dev.txt (tests, bench tools)"
	@echo "make venv-runtime create .venv and install requirements.txt only (what make serve uses)"
	@echo "make sdk          npm ci: the Flashphoner Web SDK into node_modules/"
	@echo "make deps-system  apt-get install what serving needs and is missing (python3-venv, gcc, nodejs, npm)"
	@echo "make deps-test    deps-system, then what the tests need (chromium, firefox-esr, GStreamer webrtcbin + python3-gi)"
	@echo "make clean        remove .venv, node_modules and caches"

serve: deps-system venv-runtime sdk core
	$(VENV_PY) -m webcall $(ARGS)

# The load generator (webcall_bench/, a package of its own). Starts its own server on 127.0.0.1 (--workers 1
# unless ARGS says otherwise) unless ARGS has --url; writes artifacts/bench/bench-<time>.{json,png}.
bench: deps-system venv core
	$(VENV_PY) -m webcall bench $(ARGS)

# pytest exits 5 when it collects no test; that is reported, not treated as a failure.
test: deps-test venv sdk core
	@rc=0; $(VENV_PY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)"; exit 0; fi; \
	exit $$rc

# `make test` runs tests/fuzz too, but with the short "ci" profile (300 derandomized examples per target).
# This is the long run: random seeds, failures kept in .hypothesis/ and replayed first next time.
FUZZ_EXAMPLES ?= 100000
fuzz: venv
	WEBCALL_FUZZ_PROFILE=fuzz WEBCALL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV_PY) -m pytest -q tests/fuzz \
	  --hypothesis-show-statistics --durations=0 $(PYTEST_ARGS)

# Not part of make test: a report (a table, and artifacts/soak/soak-<time>.json); exits 1 if a session or stream
# is left at the end (or the RSS slope is above --max-slope, when given).
soak: deps-system venv core
	$(VENV_PY) tools/soak.py $(ARGS)

# The long live fuzz (random seed unless LIVE_FUZZ_SEED): counts printed. make test runs it short and seeded.
LIVE_FUZZ_MUTATIONS ?= 20000
LIVE_FUZZ_UDP_SECONDS ?= 60
LIVE_FUZZ_SEED ?= $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
fuzz-live: venv core
	WEBCALL_LIVE_FUZZ_MUTATIONS=$(LIVE_FUZZ_MUTATIONS) WEBCALL_LIVE_FUZZ_UDP_SECONDS=$(LIVE_FUZZ_UDP_SECONDS) \
	  WEBCALL_LIVE_FUZZ_SEED=$(LIVE_FUZZ_SEED) $(VENV_PY) -m pytest -q -s tests/e2e/test_live_fuzz.py \
	  -p no:cacheprovider $(PYTEST_ARGS)

# Not part of make test: the relay's cost per packet, sealed and plain, and an edge player's time to first frame
# (cold: pulled on demand; warm: already relayed there), against a real redis-server and two nodes.
cluster-figures: deps-test venv core
	$(VENV_PY) tools/cluster_figures.py $(ARGS)

venv: $(VENV_STAMP)

venv-runtime: $(RUNTIME_STAMP)

core: $(CORE_LIB)

# A plain shared library (no Python headers): fanout.py dlopens it and checks its ABI version.
$(CORE_LIB): $(CORE_SRC) $(CORE_HDR) | deps-system
	$(CC) -O2 -Wall -Wextra -Werror -fPIC -shared -pthread -o $@ $(CORE_SRC)

# Creates $(VENV) if it has no working interpreter (shared by both venv stamps).
define make-venv
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "error: $(PYTHON) is older than Python 3.11 (set PYTHON=python3.11)" >&2; exit 1; }
	@if ! $(VENV_PY) -c 'import sys' >/dev/null 2>&1; then \
	  echo "creating $(VENV) with $$($(PYTHON) -V)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); \
	fi
endef

# What the server imports at runtime, and nothing else.
$(RUNTIME_STAMP): requirements.txt | deps-system
	$(make-venv)
	$(VENV_PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@

# The test and bench tools on top (requirements-dev.txt includes requirements.txt, so the runtime set is
# installed too and its stamp is refreshed).
$(VENV_STAMP): requirements.txt requirements-dev.txt | deps-system
	$(make-venv)
	$(VENV_PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	@touch $(RUNTIME_STAMP) $@

sdk: $(SDK_STAMP)

$(SDK_STAMP): package.json package-lock.json | deps-system
	npm ci --no-audit --no-fund --loglevel=error
	@test -f node_modules/@flashphoner/websdk/flashphoner.js
	@touch $@

# Quick and idempotent: apt-get runs only when a check fails. $(1) is a list of checks; $(2) is "venv"
# to also check that $(PYTHON) can create a venv.
define install-missing
	@missing=""; \
	for pair in $(1); do \
	  cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  if [ "$$cmd" = "$$pair" ]; then \
	    dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q ' installed$$' || missing="$$missing $$pkg"; \
	  else \
	    command -v "$$cmd" >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	  fi; \
	done; \
	if [ "$(2)" = venv ] && ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
	  dpkg -s python3-venv >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

deps-system:
	$(call install-missing,$(SYSTEM_CHECKS),venv)

# After deps-system, so the two never run apt-get at the same time (make -j).
deps-test: deps-system
	$(call install-missing,$(TEST_CHECKS))

clean:
	rm -rf $(VENV) node_modules .pytest_cache $(CORE_LIB)
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
