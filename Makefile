# kenv developer entry points. `make run` and `make test` are the two commands the README promises.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := buildah docker-registry debootstrap curl
export NO_PROXY := 127.0.0.1,localhost,$(NO_PROXY)
export no_proxy := 127.0.0.1,localhost,$(no_proxy)

.PHONY: run test deps apt binaries venv lint unit integration reliability crds image bench bench-load clean-cluster

run: deps ## local control plane + registry + operator + a sample Environment built to Ready
	$(PY) hack/run.py

test: deps lint ## everything CI runs
	$(PY) -m pytest tests -v -p no:cacheprovider --timeout=900

deps: apt binaries venv

apt: ## Debian packages a fresh machine of this kind lacks
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  (apt-get update -q || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

binaries: ## control-plane binaries and the Kaniko executor, built from the Go module proxy into ~/.cache/kenv (once)
	@hack/build-binaries.sh >/dev/null
	@hack/build-kaniko.sh >/dev/null

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv ## ruff, mypy and the CRD drift check
	$(VENV)/bin/ruff check operator tests hack bench
	$(VENV)/bin/mypy operator/kenv

unit: venv
	$(PY) -m pytest tests/unit -q -p no:cacheprovider

integration: deps
	$(PY) -m pytest tests/integration -v -p no:cacheprovider

reliability: deps
	$(PY) -m pytest tests/reliability -v -p no:cacheprovider

crds: venv ## regenerate crds/ and the chart's copy from the models
	$(VENV)/bin/kenv crd --write crds
	mkdir -p charts/kenv/crds && cp crds/*.yaml charts/kenv/crds/

# BASE_IMAGE=host/repo:tag builds on another Debian/python3 base (e.g. the local registry's, see hack/base-image.sh);
# the host's CA bundle is mounted for pip so builds work behind a TLS-intercepting proxy.
BASE_IMAGE ?= python:3.11-slim-bookworm
HOST_CA := /etc/ssl/certs/ca-certificates.crt
image: apt ## the operator image, built with buildah (no Docker engine needed)
	buildah --storage-driver vfs bud --isolation chroot --tls-verify=$(if $(INSECURE),false,true) \
	  --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  $(if $(wildcard $(HOST_CA)),-v $(HOST_CA):/run/kenv-ca.crt:ro --build-arg PIP_CERT=/run/kenv-ca.crt) \
	  -f hack/operator.Dockerfile -t kenv-operator:dev .

bench: deps ## figures, printed (see README): render, webhook latency, a real build vs plain buildah, reconcile throughput
	$(PY) bench/run.py render
	$(PY) bench/webhook.py
	$(PY) bench/build.py
	$(PY) bench/reconcile.py

bench-load: deps ## the full-size load test (300 Environments, real builds; about an hour on 2 cores)
	$(PY) bench/load.py

clean-cluster:
	hack/cluster down || true
