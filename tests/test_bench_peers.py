"""Tests of scripts/bench_peers.py without a network or the peer venvs.

Argument parsing, case enumeration and skipping, the accuracy-agreement rule and the JSON lines
(with fake runners), and one tiny fedray-only run through the real CLI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_peers.py"
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
}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module
    spec.loader.exec_module(module)
    return module


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


def test_parse_args_defaults_and_lists(bench: ModuleType) -> None:
    args = bench.parse_args([])
    assert args.systems == "flower,pfl,fedray"
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


def test_why_not(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bench.why_not(bench.Case("logreg", 1000, 10, 3)) is None
    assert "cohort 100 > population 50" in bench.why_not(bench.Case("logreg", 50, 100, 3))
    monkeypatch.setitem(bench.MODEL_TABLE, "ghost", bench.ModelCase("ghost", "ghost", "synthetic"))
    reason = bench.why_not(bench.Case("ghost", 1000, 10, 3))
    assert reason.startswith("ghost not available") and "conf/model/ghost.yaml" in reason


def test_workload_spec_is_fedrays_config(bench: ModuleType) -> None:
    spec = bench.workload_spec(bench.Case("logreg", 1000, 10, 3, seed=7))
    assert spec["model_target"] == "engine.models.LogisticRegression"
    assert spec["population_target"] == "engine.population.SyntheticPopulation"
    assert spec["population_kwargs"]["num_clients"] == 1000
    assert spec["population_kwargs"]["seed"] == 7
    assert spec["population_kwargs"]["num_features"] == 60
    assert (spec["epochs"], spec["batch_size"], spec["lr"], spec["cohort"]) == (1, 10, 0.1, 10)
    overrides = bench.fedray_overrides(bench.Case("logreg", 1000, 10, 3, seed=7), Path("/tmp/x"))
    assert "population.num_clients=1000" in overrides
    assert "participation.cohort_size=10" in overrides
    assert "seed=7" in overrides and "hydra.run.dir=/tmp/x" in overrides


def test_agreement_rule(bench: ModuleType) -> None:
    assert bench.agrees(0.50, 0.515, 0.02, None)
    assert not bench.agrees(0.50, 0.53, 0.02, None)
    assert bench.agrees(0.50, 0.53, 0.02, 0.011)  # 3 x std = 0.033
    assert not bench.agrees(0.50, 0.53, 0.02, 0.005)  # the floor 0.02 still applies


def test_compare_speedups_and_void(bench: ModuleType) -> None:
    case = bench.Case("logreg", 1000, 10, 3)
    fedray = bench.result_line("fedray", case, _measured(0.1, 0.50))
    peers = {
        "flower": bench.result_line("flower", case, _measured(0.4, 0.51)),
        "pfl": bench.result_line("pfl", case, _measured(0.05, 0.40)),
    }
    line, voids = bench.compare(fedray, peers, 0.02)
    assert line["speedup_vs_flower"] == 4.0 and line["speedup_vs_pfl"] == 0.5
    assert line["accuracy_agrees_flower"] is True and line["accuracy_agrees_pfl"] is False
    assert len(voids) == 1 and voids[0]["status"] == "void"
    assert voids[0]["systems"] == ["fedray", "pfl"] and "void" in voids[0]["reason"]
    skipped = {"flower": bench.skipped_line("flower", case, "did not finish in 600 s")}
    line, voids = bench.compare(fedray, skipped, 0.02)
    assert line["speedup_vs_flower"] is None and voids == []


def test_run_case_lines_with_fake_runners(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_peer(python: Path, peer: Any, case: Any, timeout: float) -> dict[str, Any]:
        if peer.name == "pfl":
            raise bench.CaseTimeoutError(f"did not finish in {timeout:.0f} s")
        return _measured(0.3, 0.5)

    monkeypatch.setattr(bench, "run_peer", fake_peer)
    monkeypatch.setattr(bench, "run_fedray", lambda case, timeout: _measured(0.1, 0.6))
    args = bench.parse_args(["--models", "logreg", "--populations", "1000", "--cohorts", "10"])
    case = bench.plan(args)[0]
    bench.run_case(case, bench.SYSTEMS, {"flower": Path("py"), "pfl": Path("py")}, args)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x.get("system", "void"), x["status"]) for x in lines] == [
        ("flower", "ok"),
        ("pfl", "skipped"),
        ("fedray", "ok"),
        ("void", "void"),
    ]
    assert set(lines[0]) >= LINE_KEYS and set(lines[2]) >= LINE_KEYS
    assert "did not finish in 600 s" in lines[1]["reason"]
    assert lines[2]["speedup_vs_flower"] == 3.0 and lines[2]["speedup_vs_pfl"] is None
    assert lines[2]["accuracy_agrees_flower"] is False


def test_with_seeds_reports_accuracy_std(bench: ModuleType) -> None:
    accuracies = iter([0.5, 0.6, 0.7])
    seen: list[int] = []

    def run(case: Any) -> dict[str, Any]:
        seen.append(case.seed)
        return _measured(0.1, next(accuracies))

    result = bench.with_seeds(run, bench.Case("logreg", 1000, 10, 3, seed=4), 3)
    assert seen == [4, 5, 6]
    assert result["final_accuracy"] == pytest.approx(0.6)
    assert result["accuracy_std"] == pytest.approx(0.1)


def test_parse_result_takes_last_line(bench: ModuleType) -> None:
    stdout = 'noise\n{"bench": "peers", "a": 1}\nmore\n{"bench": "peers", "a": 2}\n'
    assert bench.parse_result(stdout) == {"bench": "peers", "a": 2}
    with pytest.raises(RuntimeError):
        bench.parse_result("nothing here\n")


def test_timeout_kills_and_reports(bench: ModuleType) -> None:
    with pytest.raises(bench.CaseTimeoutError):
        bench._run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_existing_venv_is_reused(bench: ModuleType, tmp_path: Path) -> None:
    python = bench.venv_python(tmp_path, "fake")
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    peer = bench.Peer("fake", "no-such-requirement", ("json",), "fake")
    assert bench.ensure_venv(tmp_path, peer, print) == python  # no pip: it already works


def test_fedray_only_tiny_run() -> None:
    argv = [sys.executable, str(SCRIPT), "--systems", "fedray", "--models", "logreg"]
    argv += ["--populations", "1000", "--cohorts", "10", "--rounds", "3", "--timeout", "110"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
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
    assert line["rounds_completed"] == 3
    assert line["steady_s_per_round"] > 0 and line["cold_start_s"] > 0
    assert 0.0 <= line["final_accuracy"] <= 1.0
    assert "ray" in line["versions"]
