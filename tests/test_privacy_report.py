"""scripts/privacy_report.py: the planning tool, once run as a user would, else its `main`."""

from __future__ import annotations

import contextlib
import functools
import io
import json
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
