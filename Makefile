# fedray: every target creates .venv with pip when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export WANDB_SILENT := true

.PHONY: run test lint bench bench-steps bench-population bench-privacy bench-aggregation bench-ddp bench-audit bench-ledger bench-peers clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)  ## Run the default simulation (1M clients, FedAvg, offline wandb).
	$(BIN)/fedray $(ARGS)

# pytest-xdist workers: each file runs whole on one worker, the slow files first (conftest.py).
TEST_WORKERS ?= 2

test: $(STAMP) lint  ## ruff, mypy and the whole pytest suite; fails if any fails.
	WANDB_MODE=disabled $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)  ## Per-round overhead of fedray above a plain torch loop (JSON lines).
	$(BIN)/python scripts/bench_overhead.py $(ARGS)

bench-steps: $(STAMP)  ## Per-step fixed vs per-example cost of each model; loop vs vectorised clients.
	$(BIN)/python scripts/bench_steps.py $(ARGS)

bench-privacy: $(STAMP)  ## Noise time per round and memory of every mechanism; sensitivity and optimiser times.
	$(BIN)/python scripts/bench_privacy.py $(ARGS)

bench-aggregation: $(STAMP)  ## Bytes per round and server time: dense vs sparse (LM) and dense vs moe.
	$(BIN)/python scripts/bench_aggregation.py $(ARGS)

bench-population: $(STAMP)  ## Driver bytes per client and ms per round of availability + selection at 1M and 10M.
	$(BIN)/python scripts/bench_population.py $(ARGS)

bench-audit: $(STAMP)  ## Canary audit: a run with 1,000 canaries vs without, and the audit's own cost.
	$(BIN)/python scripts/bench_audit.py $(ARGS)

bench-ddp: $(STAMP)  ## Distributed DP: encoder cost per client vs a dense pass; a round vs the central Gaussian's.
	$(BIN)/python scripts/bench_ddp.py $(ARGS)

bench-ledger: $(STAMP)  ## Seconds of scripts/ledger_report.py on a 1M-client, 2,000-round participation log.
	$(BIN)/python scripts/bench_ledger_report.py $(ARGS)

bench-peers: $(STAMP)  ## fedray vs Flower vs pfl-research on one workload (peer venvs in .bench/).
	$(BIN)/python scripts/bench_peers.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache .mypy_cache .ruff_cache
