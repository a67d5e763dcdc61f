"""Every config option builds, and the population-realism experiments run and show their clock."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.app.build import build_experiment
from engine.app.run import CONFIG_DIR
from engine.runtime import LocalBackend
from engine.scheduling import read_log
from tests.conftest import compose_config, metrics_rows, run_composed

# Options whose yaml leaves a required input (a data file) to the user: built in their own tests.
NEEDS_A_FILE = {("population", "leaf"), ("population", "tff_h5"), ("population", "shakespeare")}
GROUPS = (
    "population",
    "availability",
    "participation",
    "devices",
    "model",
    "mechanism",
    "clipping",
    "strategy",
)
# What an option needs beside it: private mechanisms need clipping, clipping uniform weights.
NEEDS: dict[str | tuple[str, str], tuple[str, ...]] = {
    "mechanism": ("clipping=fixed", "aggregation.weighting=uniform"),
    "clipping": ("aggregation.weighting=uniform",),
    ("model", "cnn"): ("population=femnist",),  # 28 x 28 inputs
    ("model", "lm"): ("population=zipf_text",),  # token sequences
    ("model", "moe_lm"): ("population=zipf_text",),
    ("model", "mf_recon"): ("population=ratings",),  # rated item ids
    ("population", "zipf_text"): ("model=lm",),
    ("population", "ratings"): ("model=mf_recon",),
}
OPTIONS = [
    (group, path.stem)
    for group in GROUPS
    for path in sorted((CONFIG_DIR / group).glob("*.yaml"))
    if (group, path.stem) not in NEEDS_A_FILE
]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_builds(group, option):
    extra = NEEDS.get((group, option), NEEDS.get(group, ()) if option != "none" else ())
    experiment, _ = build_experiment(
        compose_config("experiment=smoke", f"{group}={option}", *extra)
    )
    assert experiment.participation.cohort_size <= experiment.population.num_clients
    mask = experiment.availability.available(3600.0)
    assert mask.shape == (experiment.population.num_clients,)
    experiment.model_factory()


@pytest.mark.parametrize(
    "name", ["diurnal_cyclic_1m", "fedscale_replay", "quickstart", "blt_cyclic"]
)
def test_experiments_compose(name):
    experiment, _ = build_experiment(compose_config(f"experiment={name}"))
    assert experiment.name == name


def _run(tmp_path: Path, *overrides: str) -> tuple[list[dict], dict]:
    """A run's metrics rows and summary; in this process: these tests are not about Ray."""
    summary = run_composed(tmp_path, *overrides, backend=LocalBackend())
    return metrics_rows(tmp_path), summary


def test_diurnal_cyclic_run_cycles_over_two_simulated_days(tmp_path):
    # The acceptance run, shrunk: 20k clients and 30-minute check-ins reach two days in 100 rounds.
    rows, summary = _run(
        tmp_path,
        "experiment=diurnal_cyclic_1m",
        "population.num_clients=20000",
        "rounds=100",
        "clock.checkin_s=1800",
        "eval.every=0",
        "eval.num_clients=50",
        "tracking.mode=disabled",
        "tracking.progress=false",
        "tracking.participation_log=true",
    )
    hours = np.array([row["system/sim_time_h"] for row in rows])
    available = np.array([row["participation/available"] for row in rows])
    assert np.all(np.diff(hours) > 0)
    assert hours[-1] >= 48
    # Two days, two peaks: the available count rises and falls with the local night.
    for day in (0, 1):
        in_day = (hours >= 24 * day) & (hours < 24 * (day + 1))
        assert available[in_day].max() > 4 * max(available[in_day].min(), 1)
    selected = np.array([row["participation/selected"] for row in rows])
    assert np.all(selected <= 130)
    assert np.median(selected) == 130  # over-selection 1.3 x 100, unless few are online
    for row in rows:
        assert row["participation/reported"] <= min(row["participation/selected"], 100)
        assert row["participation/reported"] >= 80  # min_report_fraction, else retried
    assert (tmp_path / "availability_over_time.png").stat().st_size > 0
    assert (tmp_path / "participation_histogram.png").stat().st_size > 0
    assert summary["participation/bound_holds"] is True
    assert summary["participation/bound_min_separation"] == 4
    # The log has exactly the committed (round, client) pairs, each client in its cyclic group.
    rounds, ids = read_log(tmp_path / "participation.parquet")
    assert len(ids) == sum(row["participation/reported"] for row in rows)
    assert np.all(ids % 4 == rounds % 4)
    parts = sorted((tmp_path / "participation.parquet").glob("part-*.parquet"))
    assert parts and all(pq.read_schema(p).names == ["round", "client_id"] for p in parts)


def test_fedscale_replay_runs(tmp_path):
    rows, summary = _run(
        tmp_path,
        "experiment=fedscale_replay",
        "rounds=6",
        "eval.num_clients=50",
        "tracking.mode=disabled",
        "tracking.progress=false",
    )
    assert summary["rounds_completed"] == 6
    assert all(row["participation/dropped"] >= 0 for row in rows)
    assert all(0 < row["participation/available"] < 20_000 for row in rows)


def test_private_run_reports_the_planned_epsilon_and_the_observed_one(tmp_path):
    overrides = (
        "experiment=smoke",
        "mechanism=blt",
        "mechanism.noise_multiplier=2.0",
        "participation=cyclic",
        "participation.num_groups=2",
        "clipping=adaptive",
        "aggregation.weighting=uniform",
        "strategy=dpftrl",
        "rounds=6",
        "eval.every=2",
    )
    rows, summary = _run(tmp_path, *overrides)
    evaluated = [row for row in rows if "eval/accuracy" in row]
    assert [row["round"] for row in evaluated] == [1, 3, 5]
    epsilons = [row["privacy/epsilon"] for row in evaluated]
    assert all(0 < a <= b for a, b in itertools.pairwise(epsilons))
    assert all("privacy/clip_norm" in row and "privacy/unclipped_fraction" in row for row in rows)
    assert summary["privacy/epsilon"] == epsilons[-1]
    assert summary["privacy/rho"] == evaluated[-1]["privacy/rho"]
    assert summary["privacy/delta"] == 1e-10
    # The headline is planned from the declared bound (k, b) = (3, 2) of 6 rounds; the ledger's
    # observed figure never exceeds it.
    mechanism = build_experiment(compose_config(*overrides))[0].mechanism
    rho = mechanism.sensitivity_squared(6, 3, 2) / (2 * 2.0**2)
    assert summary["privacy/rho"] == pytest.approx(rho)
    observed = [row["privacy/epsilon_observed"] for row in evaluated]
    assert all(seen <= planned for seen, planned in zip(observed, epsilons, strict=True))
    assert summary["privacy/epsilon_observed"] == observed[-1] <= summary["privacy/epsilon"]
    assert summary["participation/bound_min_separation"] == 2
