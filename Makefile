# kenv developer entry points. `make run` and `make test` are the two commands the README promises.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The local node: containerd + runc (crun fails on this cgroup v1 hybrid), CNI plugins, iptables and conntrack for
# kube-proxy; buildah and debootstrap build the images pods run (the registry is built by hack/build-binaries.sh).
APT_PACKAGES := containerd runc containernetworking-plugins iptables iproute2 conntrack gcc libc6-dev buildah \
	debootstrap curl
export NO_PROXY := 127.0.0.1,localhost,$(NO_PROXY)
export no_proxy := 127.0.0.1,localhost,$(no_proxy)

.PHONY: run test deps apt binaries venv scan lint unit integration reliability crds image bench bench-load clean-cluster

run: deps ## local control plane + registry + operator + a sample Environment built to Ready
	$(PY) hack/run.py

test: deps lint scan ## everything CI runs
	$(PY) -m pytest tests -v -p no:cacheprovider --timeout=900

deps: apt binaries venv

apt: ## Debian packages a fresh machine of this kind lacks
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  (apt-get update -q || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

binaries: ## control-plane and node binaries, Kaniko, BuildKit: built from the Go module proxy into ~/.cache/kenv (once)
	@hack/build-binaries.sh >/dev/null
	@hack/build-kaniko.sh >/dev/null
	@hack/build-buildkit.sh >/dev/null

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# checkov in a venv of its own: it pins dependencies (boto3, jsonschema, …) that kenv's need not share.
CHECKOV_VERSION := 3.3.30
SCAN_VENV := .venv-scan
$(SCAN_VENV)/.installed-$(CHECKOV_VERSION):
	test -x $(SCAN_VENV)/bin/python || $(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install -q 'checkov==$(CHECKOV_VERSION)'
	touch $@

scan: binaries venv $(SCAN_VENV)/.installed-$(CHECKOV_VERSION) ## checkov over the chart and each builder's build Job; every failure answered (hack/scan-answers.yaml)
	$(PY) hack/scan.py --checkov $(SCAN_VENV)/bin/checkov

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

image: apt ## the operator image (hack/operator.Dockerfile) on the local Debian/python3 base, built with buildah, tagged kenv-operator:dev
	ref=$$($(PYTHON) hack/images.py build operator) && buildah --storage-driver vfs tag "$$ref" kenv-operator:dev && echo "$$ref"

bench: deps ## figures, printed (see README): render, pod start, admission latency, a build vs a plain Kaniko Job, the iteration loop, reconcile, failover
	$(PY) bench/run.py render
	$(PY) bench/pods.py
	$(PY) bench/admission_profile.py
	$(PY) bench/webhook.py
	$(PY) bench/overhead.py
	$(PY) bench/build.py
	$(PY) bench/reconcile.py
	$(PY) bench/failover.py

bench-load: deps ## the full-size load test (300 Environments, real builds; about an hour on 2 cores)
	$(PY) bench/load.py

clean-cluster:
	hack/cluster down || true
