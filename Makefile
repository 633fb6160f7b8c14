# One way to run every check. Builds are cached under .cache/ (git-ignored).
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: setup deps tools venv check lint fmt typecheck imports generate test test-unit \
        cluster cluster-down demo bench image clean

setup: deps venv tools            ## everything a fresh machine needs

deps:
	hack/install-deps.sh

venv: $(VENV_STAMP)
$(VENV_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	rm -f .venv/.installed-*; touch $@

tools:
	hack/build-tools.sh

generate: venv                    ## regenerate the CRD from the API models
	.venv/bin/distillery crd --output-dir crds --chart-dir charts/distillery/templates \
	  --reference docs/crd-reference.md
	$(PY) hack/gen_settings_doc.py

lint: venv
	.venv/bin/ruff check operator tests hack benchmarks
	.venv/bin/ruff format --check operator tests hack benchmarks

fmt: venv                         ## fix what ruff can: formatting and import order
	.venv/bin/ruff check --fix operator tests hack benchmarks
	.venv/bin/ruff format operator tests hack benchmarks

# Tests, scripts and benchmarks too, strict but for the kubernetes client's Optional
# model fields (union-attr, index): a test would only assert what the server returned.
typecheck: venv
	.venv/bin/mypy
	MYPYPATH=operator:hack:benchmarks .venv/bin/mypy --strict --explicit-package-bases \
	  --disable-error-code union-attr --disable-error-code index tests hack/*.py benchmarks/*.py

imports: venv
	.venv/bin/lint-imports

check: lint typecheck imports     ## ruff + mypy --strict + import-linter

test: setup check                 ## all tiers: unit, integration (real control plane), e2e
	hack/run-tests.sh

test-unit: venv
	hack/run-tests.sh tests/unit

cluster: setup                    ## start the local cluster; leaves .cluster/kubeconfig
	$(PY) hack/localcluster.py up

cluster-down:
	$(PY) hack/localcluster.py down

demo: setup                       ## the main job on the local cluster
	$(PY) hack/demo.py

bench: setup
	$(PY) benchmarks/run.py

IMAGE ?= distillery:dev
image:                            ## the operator image (needs a Docker engine; not run in CI)
	docker build -f operator/Dockerfile -t $(IMAGE) .

clean: cluster-down
	rm -rf .venv .cluster reports
