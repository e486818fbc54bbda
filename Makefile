# stackyard: `make run` starts the main job, `make test` installs what it needs and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test venv install-crds clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The operator with its API and metrics against the current kube context; the embedded
# PostgreSQL under .stackyard/ unless STACKYARD_DATABASE_URL is set.
run: $(STAMP)
	@$(BIN)/kubectl version --request-timeout=5s >/dev/null 2>&1 || { \
	  echo "make run: no Kubernetes cluster is reachable with the current kube context" \
	       "($$($(BIN)/kubectl config current-context 2>/dev/null || echo 'none set'))."; \
	  echo "Start a local one (kind create cluster, or k3d cluster create) or point KUBECONFIG at one, then run make run again."; \
	  exit 1; }
	$(BIN)/kubectl apply --server-side -f crds/
	$(BIN)/stackyard run

clean:
	rm -rf $(VENV) .pytest_cache
