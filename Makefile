# Quickstart: `make run` (default simulation end to end) and `make test` (the whole suite);
# `make test-fast` is the inner loop: everything but real simulations and deployments.
# Both create .venv when it is missing (pinned CPU torch first, then the project with its dev
# extras) and are quick when it exists.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedmtl-installed
TORCH := torch==2.13.0
ARGS ?=
# pytest worker processes. Much of a real simulation's time is Flower and Ray waiting, so
# workers (each with its own SuperLink and Ray head) overlap those waits, even on two cores;
# a module stays whole on one worker (--dist loadscope), so its fixtures run once.
TEST_WORKERS ?= 3

.PHONY: run test test-fast lint venv clean deploy-local compose-lint compare converged bench robustness privacy privacy-audit privacy-population weighting ablation

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,tracking]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m deploy.cli $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -ra -n $(TEST_WORKERS) --dist loadscope --durations=25

test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -ra -m "not slow"

# A real deployment on this machine: SuperLink with TLS + SuperNode authentication, 3 nodes.
deploy-local: $(STAMP)
	$(PY) -m deploy.local run $(ARGS)

compose-lint:
	npm ci --no-audit --no-fund
	npx dclint docker-compose.yml docker-compose.tls.yml --max-warnings 0

# Experiments: each writes its report under docs/ (see the README).
compare: $(STAMP)
	$(PY) -m experiments.compare $(ARGS)

# MultiDigits α=0.5 at a converged budget (50 rounds, 5 seeds): the rows its targets read.
CONVERGED := --datasets multidigits --alphas 0.5 --seeds 0 1 2 3 4 -c num-server-rounds=50 \
	--algorithms local single-task fedavg fedavg-ft fedper fedrep ditto fedrod centralized-tuned \
	--no-transfer --grid-dir results/compare/converged --docs docs/CONVERGED.md \
	--plots-dir docs/converged
converged: $(STAMP)
	$(PY) -m experiments.compare $(CONVERGED) $(ARGS)

bench: $(STAMP)
	$(PY) -m experiments.bench $(ARGS)

robustness: $(STAMP)
	$(PY) -m experiments.robustness $(ARGS)

privacy: $(STAMP)
	$(PY) -m experiments.privacy.sweep $(ARGS)

privacy-audit: $(STAMP)
	$(PY) -m experiments.privacy.audit $(ARGS)

privacy-population: $(STAMP)
	$(PY) -m experiments.privacy.population $(ARGS)

weighting: $(STAMP)
	$(PY) -m experiments.weighting_study $(ARGS)

ablation: $(STAMP)
	$(PY) -m experiments.ablation $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf results .state
