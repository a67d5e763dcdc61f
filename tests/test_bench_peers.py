"""Tests of scripts/bench_peers.py and scripts/peerbench/ without a network or the peer venvs.

Argument parsing, case enumeration and skipping, the accuracy-agreement rule and the JSON lines
(with fake runners), the cohort hand-off (fedray's participation log, the spec file, the pfl
sampler's replay, fedray's shuffling stream and local loop in the peers), and one tiny
fedray-only run through the real CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from common.rng import Stream, generator
from engine.scheduling import ParticipationLedger
from engine.training import LocalTraining, train_client
from tests.scripts import load_script

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SCRIPT = SCRIPTS / "bench_peers.py"
PEERS = SCRIPTS / "peers"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from peerbench import compare, driver, systems, venvs  # noqa: E402
from peerbench.cases import (  # noqa: E402
    MODEL_TABLE,
    SYSTEMS,
    Case,
    ModelCase,
    Peer,
    why_not,
    workload_spec,
)

LINE_KEYS = {
    "bench",
    "system",
    "status",
    "model",
    "population",
    "cohort",
    "rounds",
    "seed",
    "versions",
    "rounds_completed",
    "steady_s_per_round",
    "steady_s_per_round_median",
    "cold_start_s",
    "total_s",
    "driver_peak_rss_mib",
    "final_accuracy",
    "same_cohorts",
}
COHORTS = [[3, 1, 4], [1, 5, 9], [2, 6, 5]]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "bench_peers")


@pytest.fixture(scope="module")
def peer_common() -> Iterator[ModuleType]:
    """scripts/peers/peer_common.py; the test process keeps its torch thread count.

    peer_common sets torch to one thread, as the peers run.
    """
    threads = torch.get_num_threads()
    sys.path.insert(0, str(PEERS))  # the peer workloads import it as `peer_common`
    try:
        yield load_script(PEERS / "peer_common.py", "peer_common")
    finally:
        sys.path.remove(str(PEERS))
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pfl_workload(peer_common: ModuleType) -> ModuleType:
    """scripts/peers/pfl_workload.py: it imports pfl only inside its functions."""
    sys.path.insert(0, str(PEERS))
    try:
        return load_script(PEERS / "pfl_workload.py", "pfl_workload")
    finally:
        sys.path.remove(str(PEERS))


def _measured(steady: float, accuracy: float) -> dict[str, Any]:
    return {
        "versions": {"x": "1"},
        "rounds_completed": 3,
        "steady_s_per_round": steady,
        "steady_s_per_round_median": steady,
        "cold_start_s": 1.0,
        "total_s": 2.0,
        "driver_peak_rss_mib": 100.0,
        "final_accuracy": accuracy,
    }


# --- command line, cases, specs ---------------------------------------------------------------


def test_parse_args_defaults_and_lists(bench: ModuleType) -> None:
    args = bench.parse_args([])
    assert args.systems == "fedray,flower,pfl"
    assert args.models == "logreg,cnn"
    assert args.rounds == 20 and args.seeds == 1 and args.timeout == 600.0
    args = bench.parse_args(["--systems", "fedray", "--populations", "1000", "--rounds", "3"])
    cases = bench.plan(args)
    assert [(c.model, c.num_clients, c.cohort) for c in cases] == [
        ("logreg", 1000, 10),
        ("logreg", 1000, 100),
        ("cnn", 1000, 10),
        ("cnn", 1000, 100),
    ]
    assert all(c.rounds == 3 for c in cases)


@pytest.mark.parametrize(
    "argv",
    [
        ["--systems", "fedray,tff"],
        ["--models", "resnet"],
        ["--rounds", "1"],
        ["--cohorts", "ten"],
        ["--seeds", "0"],
    ],
)
def test_parse_args_rejects(bench: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


def test_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    assert why_not(Case("logreg", 1000, 10, 3)) is None
    assert "cohort 100 > population 50" in str(why_not(Case("logreg", 50, 100, 3)))
    monkeypatch.setitem(MODEL_TABLE, "ghost", ModelCase("ghost", "ghost", "synthetic"))
    reason = str(why_not(Case("ghost", 1000, 10, 3)))
    assert reason.startswith("ghost not available") and "conf/model/ghost.yaml" in reason


def test_workload_spec_is_fedrays_config() -> None:
    spec = workload_spec(Case("logreg", 1000, 10, 3, seed=7))
    assert spec["model_target"] == "engine.training.models.LogisticRegression"
    assert spec["population_target"] == "engine.population.base.SyntheticPopulation"
    assert spec["population_kwargs"]["num_clients"] == 1000
    assert spec["population_kwargs"]["seed"] == 7
    assert spec["population_kwargs"]["num_features"] == 60
    assert (spec["epochs"], spec["batch_size"], spec["lr"], spec["cohort"]) == (1, 10, 0.1, 10)
    assert spec["cohorts"] is None
    overrides = systems.fedray_overrides(Case("logreg", 1000, 10, 3, seed=7), Path("/tmp/x"))
    assert "population.num_clients=1000" in overrides
    assert "participation.cohort_size=10" in overrides
    assert "tracking.participation_log=true" in overrides
    assert "seed=7" in overrides and "hydra.run.dir=/tmp/x" in overrides


# --- comparison and lines ---------------------------------------------------------------------


def test_agreement_rule() -> None:
    assert compare.agrees(0.50, 0.515, 0.02, None)
    assert not compare.agrees(0.50, 0.53, 0.02, None)
    assert compare.agrees(0.50, 0.53, 0.02, 0.011)  # 3 x std = 0.033
    assert not compare.agrees(0.50, 0.53, 0.02, 0.005)  # the floor 0.02 still applies


def test_compare_speedups_and_void() -> None:
    case = Case("logreg", 1000, 10, 3)
    fedray = compare.result_line("fedray", case, _measured(0.1, 0.50), True)
    peers = {
        "flower": compare.result_line("flower", case, _measured(0.4, 0.51), True),
        "pfl": compare.result_line("pfl", case, _measured(0.05, 0.40), True),
    }
    line, voids = compare.compare(fedray, peers, 0.02)
    assert line["speedup_vs_flower"] == 4.0 and line["speedup_vs_pfl"] == 0.5
    assert line["accuracy_agrees_flower"] is True and line["accuracy_agrees_pfl"] is False
    assert len(voids) == 1 and voids[0]["status"] == "void"
    assert voids[0]["systems"] == ["fedray", "pfl"] and "void" in voids[0]["reason"]
    assert voids[0]["same_cohorts"] is True and "the same cohorts" in voids[0]["reason"]
    skipped = {"flower": compare.skipped_line("flower", case, "did not finish in 600 s")}
    line, voids = compare.compare(fedray, skipped, 0.02)
    assert line["speedup_vs_flower"] is None and voids == []


def _fake_runners(
    monkeypatch: pytest.MonkeyPatch, fedray_fails: bool = False
) -> dict[str, list[Any]]:
    """fedray trains `COHORTS` (or fails); flower finishes, pfl times out. Records the cohorts."""
    received: dict[str, list[Any]] = {"flower": [], "pfl": []}

    def fake_fedray(case: Case, timeout: float) -> tuple[dict[str, Any], list[list[int]]]:
        if fedray_fails:
            raise RuntimeError("exit status 1")
        return _measured(0.1, 0.6), [[c + case.seed for c in ids] for ids in COHORTS]

    def fake_peer(
        python: Path, peer: Peer, case: Case, timeout: float, cohorts: Any = None
    ) -> dict[str, Any]:
        received[peer.name].append(cohorts)
        if peer.name == "pfl":
            raise systems.CaseTimeoutError(f"did not finish in {timeout:.0f} s")
        return _measured(0.3, 0.5)

    monkeypatch.setattr(driver, "run_peer", fake_peer)
    monkeypatch.setattr(driver, "run_fedray", fake_fedray)
    return received


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _one_case(bench: ModuleType, chosen: tuple[str, ...], seeds: int = 1) -> None:
    argv = ["--models", "logreg", "--populations", "1000", "--cohorts", "10"]
    args = bench.parse_args([*argv, "--seeds", str(seeds)])
    driver.run_case(bench.plan(args)[0], chosen, {"flower": Path("py"), "pfl": Path("py")}, args)


def test_run_case_shares_fedrays_cohorts(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received = _fake_runners(monkeypatch)
    _one_case(bench, SYSTEMS)
    lines = _lines(capsys)
    assert [(x.get("system", "void"), x["status"]) for x in lines] == [
        ("flower", "ok"),
        ("pfl", "skipped"),
        ("fedray", "ok"),
        ("void", "void"),
    ]
    assert received == {"flower": [COHORTS], "pfl": [COHORTS]}
    assert set(lines[0]) >= LINE_KEYS and set(lines[2]) >= LINE_KEYS
    assert lines[0]["same_cohorts"] is True and lines[2]["same_cohorts"] is True
    assert "did not finish in 600 s" in lines[1]["reason"]
    assert lines[2]["speedup_vs_flower"] == 3.0 and lines[2]["speedup_vs_pfl"] is None
    assert lines[2]["accuracy_agrees_flower"] is False


def test_run_case_shares_cohorts_seed_by_seed(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received = _fake_runners(monkeypatch)
    _one_case(bench, ("fedray", "flower"), seeds=2)
    shifted = [[c + 1 for c in ids] for ids in COHORTS]
    assert received["flower"] == [COHORTS, shifted]  # seed 0's cohorts, then seed 1's
    lines = [x for x in _lines(capsys) if "system" in x]
    assert [(x["system"], x["same_cohorts"]) for x in lines] == [("flower", True), ("fedray", True)]


def test_run_case_without_fedray_samples_own_cohorts(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received = _fake_runners(monkeypatch)
    _one_case(bench, ("flower",))
    assert received["flower"] == [None]
    (line,) = _lines(capsys)
    assert (line["system"], line["status"], line["same_cohorts"]) == ("flower", "ok", False)


def test_run_case_when_fedray_fails(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received = _fake_runners(monkeypatch, fedray_fails=True)
    _one_case(bench, ("fedray", "flower"))
    assert received["flower"] == [None]
    lines = _lines(capsys)
    assert [(x["system"], x["status"]) for x in lines] == [("flower", "ok"), ("fedray", "skipped")]
    assert lines[0]["same_cohorts"] is False and "exit status 1" in lines[1]["reason"]


def test_with_seeds_reports_accuracy_std() -> None:
    accuracies = iter([0.5, 0.6, 0.7])
    seen: list[int] = []

    def run(case: Case) -> dict[str, Any]:
        seen.append(case.seed)
        return _measured(0.1, next(accuracies))

    result = driver.with_seeds(run, Case("logreg", 1000, 10, 3, seed=4), 3)
    assert seen == [4, 5, 6]
    assert result["final_accuracy"] == pytest.approx(0.6)
    assert result["accuracy_std"] == pytest.approx(0.1)


# --- subprocesses and venvs -------------------------------------------------------------------


def test_parse_result_takes_last_line() -> None:
    stdout = 'noise\n{"bench": "peers", "a": 1}\nmore\n{"bench": "peers", "a": 2}\n'
    assert systems.parse_result(stdout) == {"bench": "peers", "a": 2}
    with pytest.raises(RuntimeError):
        systems.parse_result("nothing here\n")


def test_timeout_kills_and_reports() -> None:
    with pytest.raises(systems.CaseTimeoutError):
        systems.run_command([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_existing_venv_is_reused(tmp_path: Path) -> None:
    python = venvs.venv_python(tmp_path, "fake")
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    peer = Peer("fake", "no-such-requirement", ("json",), "fake")
    assert venvs.ensure_venv(tmp_path, peer, print) == python  # no pip: it already works


def test_run_peer_hands_over_the_spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in workload that reports the cohorts of its spec file as its "versions".
    script = tmp_path / "echo_workload.py"
    measured = json.dumps(_measured(0.1, 0.5))
    script.write_text(
        "import json, sys\n"
        "spec = json.load(open(sys.argv[sys.argv.index('--spec') + 1]))\n"
        f"line = {{'bench': 'peers', **json.loads({measured!r})}}\n"
        "line['versions'] = {'cohorts': json.dumps(spec['cohorts'])}\n"
        "print(json.dumps(line))\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(systems, "PEERS_DIR", tmp_path)
    peer = Peer("echo", "none", ("json",), "echo")
    case = Case("logreg", 1000, 3, 3)
    result = systems.run_peer(Path(sys.executable), peer, case, 60.0, COHORTS)
    assert json.loads(result["versions"]["cohorts"]) == COHORTS
    assert set(result) == set(systems.MEASUREMENTS)


# --- cohorts: fedray's log, the peers' replay -------------------------------------------------


def test_read_cohorts_from_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "participation.parquet"
    ledger = ParticipationLedger(10, log_path=path)
    history = [[3, 1, 4], [], [1, 5, 9], [2, 6]]  # round 1 committed nobody
    for round_idx, ids in enumerate(history):
        ledger.record(round_idx, 60.0 * round_idx, np.array(ids, dtype=np.int64))
    ledger.close()
    assert systems.read_cohorts(path, len(history)) == history
    assert systems.read_cohorts(path, len(history) + 1) == [*history, []]


def test_spec_file_round_trips_with_cohorts(peer_common: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(workload_spec(Case("logreg", 1000, 3, 3), COHORTS)))
    spec = peer_common.parse_spec(["--spec", str(path)])
    assert spec.cohorts == COHORTS and spec.num_clients == 1000
    with pytest.raises(ValueError, match="3 rounds of 3 clients"):
        peer_common.Spec(**{**spec.__dict__, "cohorts": COHORTS[:2]})


def test_pfl_sampler_replays_cohorts(pfl_workload: ModuleType) -> None:
    sampler = pfl_workload.CohortSampler(10, 3, seed=0, cohorts=COHORTS)
    draws, rounds = [], []
    for _ in range(9):
        draws.append(sampler())
        rounds.append(sampler.round_idx)
    assert draws == [c for ids in COHORTS for c in ids]
    assert rounds == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # draw k is of round k // cohort
    with pytest.raises(RuntimeError, match="past"):
        sampler()


def test_pfl_sampler_draws_distinct_cohorts(pfl_workload: ModuleType) -> None:
    sampler = pfl_workload.CohortSampler(10, 4, seed=0)
    cohorts = [[sampler() for _ in range(4)] for _ in range(5)]
    assert all(len(set(ids)) == 4 and min(ids) >= 0 and max(ids) < 10 for ids in cohorts)
    assert sampler.round_idx == 4


def test_peer_local_training_is_fedrays(peer_common: ModuleType) -> None:
    """Same client, round and seed: the peers' local loop gives fedray's update."""
    spec = peer_common.Spec(**workload_spec(Case("logreg", 1000, 3, 3, seed=5, epochs=2)))
    population = peer_common.build_population(spec)
    model = peer_common.build_model(spec, population)
    params = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    data = population.client_data(17)
    training = LocalTraining(epochs=2, batch_size=spec.batch_size, lr=spec.lr, vectorise="off")
    update = train_client(model, params, data, training, generator(5, Stream.CLIENT_TRAIN, 4, 17))
    torch.nn.utils.vector_to_parameters(params.clone(), model.parameters())
    peer_common.train_local(model, data, spec, peer_common.client_rng(5, 4, 17))
    peer = torch.nn.utils.parameters_to_vector(model.parameters()).detach() - params
    np.testing.assert_allclose(peer.numpy(), update.delta, rtol=0, atol=1e-6)


# --- the real CLI -----------------------------------------------------------------------------


def test_fedray_only_tiny_run(session_ray_address: str) -> None:
    argv = [sys.executable, str(SCRIPT), "--systems", "fedray", "--models", "logreg"]
    argv += ["--populations", "1000", "--cohorts", "10", "--rounds", "3", "--timeout", "110"]
    # fedray's run joins the session's Ray (as RAY_ADDRESS tells `ray.init`): none to start.
    env = {**os.environ, "WANDB_MODE": "disabled", "RAY_ADDRESS": session_ray_address}
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=120, env=env, check=True)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"bench"')]
    assert len(lines) == 1
    line = lines[0]
    assert set(line) >= LINE_KEYS
    assert (line["system"], line["status"], line["population"], line["cohort"]) == (
        "fedray",
        "ok",
        1000,
        10,
    )
    assert line["same_cohorts"] is False  # no peer to share them with
    assert line["rounds_completed"] == 3
    assert line["steady_s_per_round"] > 0 and line["cold_start_s"] > 0
    assert 0.0 <= line["final_accuracy"] <= 1.0
    assert "ray" in line["versions"]
