# The two commands of the README's quick start, and what they stand on.
#   make demo   set up and run the demo on the embedded default (local Ray, local MLflow)
#   make test   set up and run every test (builds the local control plane and the mlplane image
#               once, then caches them)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv

.PHONY: setup demo test unit lint typecheck lock generate manifests image clean

setup: $(VENV)/.installed

# The lock pins every package, so a fresh machine installs in minutes and never backtracks.
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==0.13.9
	$(UV) pip sync --quiet --python $(BIN)/python requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

lock:
	$(UV) pip compile --quiet pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

demo: setup
	$(BIN)/mlplane validate examples/
	$(BIN)/mlplane run examples/trainingjob-xgboost.yaml

# The image is built before pytest so its progress shows; without root it cannot be, and its test
# then fails under CI=true and is skipped elsewhere, so the rest of the suite still runs.
test: setup typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mlplane cluster build
	-$(BIN)/python -m mlplane.operator.cluster.image
	$(BIN)/python -m pytest

# The tests that need no server and no Go-built tool: under a minute, for the edit-test loop.
unit: setup
	$(BIN)/python -m pytest tests/unit -m "not services" -q

lint: typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy over the four packages. It does not read pyproject.toml's package-dir, so it finds them as
# `mlplane.*` through a tree of links to the folders.
typecheck: setup
	@mkdir -p $(VENV)/typecheck/mlplane
	@for package in operator crds training serving; do \
		ln -sfn $(CURDIR)/$$package $(VENV)/typecheck/mlplane/$$package; done
	$(BIN)/mypy

# CRD YAML in crds/ and docs/api.md, from the Pydantic models; then the chart's copy of the CRDs,
# manifests/, and the operator's RBAC table in docs/security.md. Unit tests fail when any of them
# is stale.
generate: setup
	$(BIN)/python -m mlplane.crds.generate
	$(BIN)/python -m mlplane.operator.cluster.chart
	$(BIN)/python -m mlplane.operator.cluster.rbac_table

# manifests/: the Helm chart's default install as plain YAML (builds helm once if needed).
manifests: setup
	$(BIN)/python -m mlplane.operator.cluster.chart

# dist/mlplane-<version>-oci.tar: the image the kuberay backend's Ray pods run (Debian, Ray,
# mlplane and the lock's wheels; non-root), built without a Docker daemon and cached per content
# under ~/.cache/mlplane/image/. Needs root: it apt-get installs mmdebstrap, umoci and skopeo.
image: setup
	$(BIN)/python -m mlplane.operator.cluster.image

clean:
	rm -rf $(VENV)
