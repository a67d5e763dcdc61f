"""scripts/privacy_report.py: the planning tool, once run as a user would, else its `main`."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_script

pytestmark = pytest.mark.slow  # runs the script in a subprocess

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "privacy_report.py"
KEYS = {
    "mechanism",
    "rounds",
    "max_participations",
    "min_separation",
    "noise_multiplier",
    "sensitivity_squared",
    "rho",
    "epsilon_rdp",
    "epsilon_pld",
    "delta",
    "prefix_error_max",
    "prefix_error_mean",
}


@functools.cache
def _script() -> ModuleType:
    return load_script(SCRIPT)


def _report(*args: str, as_a_user: bool = False) -> list[dict]:
    """The JSON lines of the script: run by its path in a new process if `as_a_user`, else of
    its `main` in this one (seconds of imports fewer)."""
    if as_a_user:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        stdout = result.stdout
    else:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            _script().main(list(args))
        stdout = out.getvalue()
    return [json.loads(line) for line in stdout.splitlines()]


def test_the_issue_example_tree_with_noise_multiplier():
    (line,) = _report(
        "--mechanism", "tree", "--noise-multiplier", "7", "--rounds", "2000",
        "--max-participations", "6", "--min-separation", "314", "--delta", "1e-10",
        as_a_user=True,
    )  # fmt: skip
    assert set(line) == KEYS
    assert line["sensitivity_squared"] == 79  # the exact tree DP at (T, k, b) = (2000, 6, 314)
    assert line["rho"] == pytest.approx(79 / (2 * 49))
    assert 0 < line["epsilon_pld"] <= line["epsilon_rdp"]
    assert 0 < line["prefix_error_mean"] <= line["prefix_error_max"]


@pytest.mark.parametrize("mechanism", ["tree", "blt"])
def test_target_epsilon_finds_the_noise_multiplier(mechanism):
    (line,) = _report(
        "--mechanism", mechanism, "--target-epsilon", "4", "--rounds", "64",
        "--max-participations", "4", "--min-separation", "8",
    )  # fmt: skip
    assert 4.0 * 0.995 < min(line["epsilon_rdp"], line["epsilon_pld"]) <= 4.0
    assert line["noise_multiplier"] > 0


def test_compare_reports_every_mechanism_at_equal_rho():
    lines = _report(
        "--mechanism", "gaussian", "--noise-multiplier", "3", "--rounds", "64",
        "--min-separation", "8", "--compare",
    )  # fmt: skip
    assert [line["mechanism"] for line in lines] == ["gaussian", "tree", "banded_mf", "blt"]
    assert {round(line["rho"], 9) for line in lines} == {round(lines[0]["rho"], 9)}
    by_name = {line["mechanism"]: line for line in lines}
    # Correlated noise beats independent noise on prefix sums at equal privacy.
    assert by_name["blt"]["prefix_error_max"] < by_name["gaussian"]["prefix_error_max"]
    assert by_name["banded_mf"]["prefix_error_max"] < by_name["gaussian"]["prefix_error_max"]


DDP_KEYS = {
    "mechanism", "rounds", "max_participations", "min_separation", "noise_multiplier", "bits",
    "cohort", "min_survivors", "dimension", "padded_dimension", "clip_norm", "k_stddevs", "beta",
    "scale", "local_noise_std", "l2_sensitivity", "l1_sensitivity", "rdp_per_round", "epsilon",
    "epsilon_central_gaussian", "delta", "expected_error_ratio",
    "expected_error_ratio_full_cohort",
}  # fmt: skip


@pytest.mark.parametrize("mechanism", ["ddp_gaussian", "ddp_skellam"])
def test_ddp_at_20_bits_and_1000_clients_is_within_5_percent_of_central(mechanism):
    from mechanisms.ddp.params import DdpParams, choose

    (line,) = _report(
        "--mechanism", mechanism, "--bits", "20", "--cohort", "1000", "--min-survivors", "800",
        "--dimension", "1000000", "--noise-multiplier", "1", "--rounds", "1000",
        "--max-participations", "10", "--delta", "1e-6",
    )  # fmt: skip
    assert set(line) == DDP_KEYS
    choice = choose(DdpParams(20, 1000, 800, 1.0, 1_000_000, 1.0, noise=mechanism[4:]))
    assert line["scale"] == pytest.approx(choice.scale, rel=1e-12)
    assert line["local_noise_std"] == pytest.approx(choice.scale / math.sqrt(800), rel=1e-12)
    assert line["padded_dimension"] == 2**20
    assert line["scale"] <= line["l2_sensitivity"] <= line["scale"] * 1.0001
    assert {"2", "8", "32"} <= set(line["rdp_per_round"])
    assert line["rdp_per_round"]["8"] == pytest.approx(8 / 2, rel=1e-3)  # ~ alpha / (2 z**2)
    central = line["epsilon_central_gaussian"]
    assert central <= line["epsilon"] <= 1.05 * central
    assert 1 <= line["expected_error_ratio"] < 1.001
    assert line["expected_error_ratio_full_cohort"] == pytest.approx(1000 / 800, rel=1e-3)


def test_ddp_fewer_bits_cost_epsilon_and_error():
    lines = [
        _report(
            "--mechanism", "ddp_skellam", "--bits", str(bits), "--cohort", "100",
            "--dimension", "65536", "--noise-multiplier", "1", "--rounds", "100",
        )[0]
        for bits in (12, 20)
    ]  # fmt: skip
    assert lines[0]["epsilon"] > 1.03 * lines[1]["epsilon"]
    assert lines[0]["expected_error_ratio"] > lines[1]["expected_error_ratio"]
    assert lines[0]["min_survivors"] == 100  # default: the cohort


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--bits", "4"], "--bits"),
        (["--bits", "10", "--noise-multiplier", "1000"], "--noise-multiplier"),
        (["--min-survivors", "2000"], "--min-survivors"),
        (["--dimension", "0"], "--dimension"),
        (["--clip-norm", "-1"], "--clip-norm"),
        (["--k-stddevs", "0"], "--k-stddevs"),
        (["--max-participations", "0"], "--max-participations"),
        (["--delta", "2"], "--delta"),
        (["--compare"], "--compare"),
    ],
)
def test_ddp_bad_input_is_one_line_naming_the_flag(args, flag, capsys):
    base = {"--cohort": "1000", "--dimension": "1000", "--noise-multiplier": "1"}
    for key, value in zip(args[::2], args[1::2], strict=False):
        base[key] = value
    argv = ["--mechanism", "ddp_gaussian", "--rounds", "100"]
    argv += [x for kv in base.items() for x in kv]
    if "--compare" in args:
        argv.append("--compare")
    with pytest.raises(SystemExit) as exit_:
        _script().main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {flag}: " in err, err


@pytest.mark.parametrize(
    ("missing", "flag"), [("--cohort", "--cohort"), ("--dimension", "--dimension")]
)
def test_ddp_requires_cohort_and_dimension(missing, flag, capsys):
    argv = ["--mechanism", "ddp_skellam", "--rounds", "10", "--noise-multiplier", "1"]
    argv += [
        x for kv in {"--cohort": "10", "--dimension": "10"}.items() if kv[0] != missing for x in kv
    ]
    with pytest.raises(SystemExit):
        _script().main(argv)
    assert f"error: {flag}: required" in capsys.readouterr().err


def test_ddp_refuses_a_target_epsilon(capsys):
    with pytest.raises(SystemExit):
        _script().main(
            ["--mechanism", "ddp_skellam", "--rounds", "10", "--target-epsilon", "3",
             "--cohort", "10", "--dimension", "10"]
        )  # fmt: skip
    assert "error: --target-epsilon: " in capsys.readouterr().err
