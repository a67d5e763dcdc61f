"""reports/audit.py, scripts/audit_report.py and collect_sweep's audit_epsilon.png on fake runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.collections import PathCollection

import reports.audit as audit
from reports.audit import Estimate, audit_row, judge, read_audits
from reports.sweep import CollectError, collect, find_jobs
from tests.scripts import SCRIPTS, load_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DELTA = 1e-5


@pytest.fixture(scope="module")
def cli() -> Any:
    return load_script(SCRIPTS / "audit_report.py")


@pytest.fixture(scope="module")
def collect_sweep() -> Any:
    return load_script(SCRIPTS / "collect_sweep.py")


def write_run(run: Path, overrides: list[str], summary: dict[str, Any] | str | None) -> None:
    """A fake run: `.hydra/overrides.yaml` and `summary.json` (raw text when a str)."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        text = summary if isinstance(summary, str) else json.dumps(summary)
        (run / "summary.json").write_text(text)


def audited(
    epsilon: float | None, estimate: tuple[Any, Any, Any], all_iterates: tuple[Any, Any, Any]
) -> dict[str, Any]:
    """A summary with an audit: the estimates as (value, low, high)."""
    summary = {"privacy/epsilon": epsilon, "privacy/delta": DELTA, "audit/num_canaries": 64}
    for suffix, (value, low, high) in (("", estimate), ("_all_iterates", all_iterates)):
        key = f"audit/epsilon_estimate{suffix}"
        summary |= {key: value, f"{key}_low": low, f"{key}_high": high}
    summary |= {"audit/observed_mean": 0.1, "audit/null_mean": 0.0, "final/eval_accuracy": 0.7}
    return summary


# Each case: (overrides, summary, status, a piece of the verdict's text).
CASES = {
    "plain": (["mechanism=gaussian"], {"privacy/epsilon": 2.0, "final/eval_accuracy": 0.8}),
    "noise_off": (["mechanism=none"], audited(None, ("inf", 5.0, "Infinity"), (math.inf,) * 3)),
    "below": (["seed=1"], audited(4.0, (0.5, 0.1, 1.0), (1.5, 1.0, 2.2))),
    "within": (["seed=2"], audited(1.0, (0.2, 0.0, 0.6), (1.4, 0.9, 1.9))),
    "violation": (["seed=3"], audited(1.0, (0.5, 0.2, 0.8), (3.0, 2.5, 3.5))),
    "weak": (["seed=4"], audited(8.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.4))),
}


def test_each_verdict(tmp_path: Path) -> None:
    for name, (overrides, summary) in CASES.items():
        write_run(tmp_path / name, overrides, summary)
    rows = {row.job: row for row in read_audits(tmp_path, warn=pytest.fail)}
    assert rows["plain"].verdict == audit.Verdict("not audited", "not audited")
    assert rows["plain"].num_canaries is None and rows["plain"].ratios() == (None, None)
    off = rows["noise_off"].verdict
    assert off.status == "no accountant" and off.notes == ()
    assert off.text == "no accountant (noise off): estimate inf, the canaries are detected"
    assert rows["below"].verdict == audit.Verdict("consistent", "consistent")
    assert rows["below"].ratios() == (0.5 / 4.0, 1.5 / 4.0)
    within = rows["within"].verdict
    assert within.status == "consistent"
    assert within.notes == ("all-iterates estimate above accounted, within the interval",)
    violation = rows["violation"].verdict
    assert violation.status == "VIOLATION" and "estimate 0.5" not in violation.text
    assert violation.text == "VIOLATION: all-iterates estimate 3 [2.5, 3.5] > accounted 1"
    weak = rows["weak"].verdict
    assert weak.status == "consistent" and weak.notes[0].startswith("weak audit")
    assert rows["below"].overrides == ("seed=1",) and rows["below"].delta == DELTA


def test_both_estimates_violating_are_both_named() -> None:
    row = audit_row(".", (), audited(1.0, (2.0, 1.5, 2.5), (3.0, 2.5, 3.5)))
    assert row.verdict.text.count(" > accounted 1") == 2
    assert row.verdict.text.startswith("VIOLATION: estimate 2 [1.5, 2.5] > accounted 1; all-")


def test_without_an_interval_the_estimate_is_judged() -> None:
    summary: dict[str, Any] = {"privacy/epsilon": 1.0, "audit/epsilon_estimate": 1.2}
    assert audit_row(".", (), summary).verdict.status == "VIOLATION"
    summary = {"privacy/epsilon": 1.0, "audit/num_canaries": 8}
    assert audit_row(".", (), summary).verdict.status == "no estimate"
    summary = {"privacy/epsilon": None, "audit/epsilon_estimate": 0}
    verdict = audit_row(".", (), summary).verdict
    assert verdict.text == "no accountant (noise off): estimate 0"
    assert verdict.notes[0].startswith("weak audit")


@pytest.mark.parametrize(
    "spelling", ['"inf"', '"Infinity"', '"+inf"', '"INF"', "Infinity", "1e999"]
)
def test_inf_spellings(tmp_path: Path, spelling: str) -> None:
    text = (
        '{"privacy/epsilon": 3.0, "audit/epsilon_estimate": 1.0, "audit/epsilon_estimate_low": 0.5,'
        f' "audit/epsilon_estimate_high": {spelling}, "audit/epsilon_estimate_all_iterates":'
        f' {spelling}, "audit/epsilon_estimate_all_iterates_low": {spelling}}}'
    )
    write_run(tmp_path, [], text)
    (row,) = read_audits(tmp_path, warn=pytest.fail)
    assert row.job == "."
    assert row.estimates[0].high == math.inf and row.estimates[1].value == math.inf
    assert row.ratios() == (1.0 / 3.0, math.inf)
    assert row.verdict.status == "VIOLATION" and "all-iterates estimate inf [inf, -]" in (
        row.verdict.text
    )
    line = row.as_json()
    assert json.loads(json.dumps(line, allow_nan=False)) == line
    assert (line["estimate_high"], line["estimate_all_iterates"], line["ratio_all_iterates"]) == (
        "inf",
        "inf",
        "inf",
    )


def test_a_nested_sweep_in_natural_order_with_failed_and_bad_runs(tmp_path: Path) -> None:
    write_run(tmp_path / "a" / "10", ["seed=10"], audited(2.0, (1.0, 0.5, 1.5), (1, 1, 1)))
    write_run(tmp_path / "a" / "2", ["seed=2"], audited(2.0, (0.0, 0.0, 0.1), (0, 0, 0)))
    write_run(tmp_path / "b" / "deep" / "0", [], {"audit/epsilon_estimate": "large"})
    write_run(tmp_path / "b" / "1", ["seed=1"], None)  # failed: no summary.json
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "summary.json").write_text("{}")  # a run without .hydra
    said: list[str] = []
    rows = read_audits(tmp_path, warn=said.append)
    assert [row.job for row in rows] == ["a/2", "a/10", "loose"]
    assert [row.verdict.status for row in rows] == ["consistent", "consistent", "not audited"]
    assert rows[1].overrides == ("seed=10",) and rows[2].overrides == ()
    assert said == [
        "skipped b/1: no summary.json (the job failed or was killed)",
        "skipped b/deep/0: audit/epsilon_estimate is not a number: 'large'",
    ]


def test_exposures_by_repetitions() -> None:
    summary: dict[str, Any] = {
        "privacy/epsilon": 5.0,
        "audit/exposure/r16": 12.5,
        "audit/exposure/r1": 0.75,
    }
    summary |= {"audit/exposure/r4": "inf", "audit/exposure_max": 20.0, "audit/exposure/rx": 1}
    row = audit_row(".", (), summary)
    assert row.exposures == ((1, 0.75), (4, math.inf), (16, 12.5)) and row.exposure_max == 20.0
    assert row.as_json()["exposures"] == {"r1": 0.75, "r4": "inf", "r16": 12.5}


finite = st.floats(0.0, 100.0, allow_nan=False)


@st.composite
def estimates(draw: st.DrawFn, name: str) -> Estimate:
    """An estimate, absent or with a valid interval (low <= value <= high), either end optional."""
    value = draw(st.none() | finite)
    if value is None:
        return Estimate(name, "", None, None, None)
    low = draw(st.none() | st.floats(0.0, value))
    high = draw(st.none() | st.floats(value, 200.0) | st.just(math.inf))
    return Estimate(name, "", value, low, high)


@given(st.none() | finite, estimates("a"), estimates("b"))
def test_verdict_is_the_definition(epsilon: float | None, a: Estimate, b: Estimate) -> None:
    verdict = judge(epsilon, [a, b], audited=True)
    values = [e.value for e in (a, b) if e.value is not None]
    if not values:
        assert verdict.status == "no estimate"
        return
    assert any(note.startswith("weak audit") for note in verdict.notes) == (max(values) == 0)
    if epsilon is None:
        assert verdict.status == "no accountant"
        return
    violated = [
        e.name
        for e in (a, b)
        if e.value is not None and (e.value if e.low is None else e.low) > epsilon
    ]
    assert verdict.status == ("VIOLATION" if violated else "consistent")
    assert [name for name in "ab" if f"{name} " in verdict.text] == violated
    if not violated:  # a larger budget never turns consistent into a violation
        assert judge(epsilon + 1.0, [a, b], audited=True).status == "consistent"


# --- the command line --------------------------------------------------------------------------


def run_cli(cli: Any, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_table(cli: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for name, (overrides, summary) in CASES.items():
        write_run(tmp_path / name, overrides, summary)
    status, out, err = run_cli(cli, capsys, str(tmp_path))
    assert (status, err) == (2, "")  # exit status 2: a run has a VIOLATION
    header, *lines = out.splitlines()
    assert header.split("  ")[0] == "job" and header.endswith("verdict")
    assert "exposure" not in header
    assert [line.split()[0] for line in lines] == list(sorted(CASES))
    by_job = {line.split()[0]: line for line in lines}
    assert by_job["below"].split()[1:5] == ["4", "0.5", "[0.1,", "1]"]
    assert "0.125" in by_job["below"] and "0.375" in by_job["below"]
    assert by_job["violation"].endswith(
        "VIOLATION: all-iterates estimate 3 [2.5, 3.5] > accounted 1"
    )
    assert by_job["noise_off"].split()[1:3] == ["-", "inf"]
    assert by_job["plain"].endswith("not audited")
    assert "; weak audit" in by_job["weak"]
    verdict_at = header.index("verdict")
    assert all(line[verdict_at - 2 : verdict_at] == "  " for line in lines)


def test_cli_table_with_exposures(
    cli: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    summary = audited(6.0, (1.0, 0.5, 2.0), (2.0, 1.0, 3.0))
    summary |= {"audit/exposure/r1": 1.25, "audit/exposure/r4": 7.5, "audit/exposure_max": 16}
    write_run(tmp_path / "lm", ["model=lm"], summary)
    write_run(tmp_path / "logreg", [], audited(6.0, (1.0, 0.5, 2.0), (2.0, 1.0, 3.0)))
    status, out, _ = run_cli(cli, capsys, str(tmp_path))
    header, lm, logreg = out.splitlines()
    assert status == 0 and "exposure (bits)" in header
    assert "r1 1.25, r4 7.5 (max 16)" in lm and "  -  " in logreg


def test_cli_json(cli: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for name, (overrides, summary) in CASES.items():
        write_run(tmp_path / "sweep" / name, overrides, summary)
    status, out, err = run_cli(cli, capsys, str(tmp_path / "sweep"), "--json")
    assert (status, err) == (2, "")

    def strict(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    lines = {d["job"]: d for d in (json.loads(s, parse_constant=strict) for s in out.splitlines())}
    assert list(lines) == sorted(CASES)
    within = lines["within"]
    assert within["overrides"] == ["seed=2"] and within["epsilon"] == 1.0
    assert within["estimate_all_iterates"] == 1.4 and within["ratio_all_iterates"] == 1.4
    assert (within["estimate"], within["estimate_low"], within["estimate_high"]) == (0.2, 0.0, 0.6)
    assert within["status"] == "consistent" and within["notes"] and within["exposures"] == {}
    assert lines["noise_off"]["estimate"] == "inf" and lines["noise_off"]["ratio"] is None
    assert lines["violation"]["status"] == "VIOLATION"
    assert lines["plain"]["verdict"] == "not audited" and lines["plain"]["num_canaries"] is None


def test_cli_errors_are_one_line(
    cli: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cases = {
        tmp_path / "absent": f"{tmp_path / 'absent'}: not a directory",
        tmp_path / "file": f"{tmp_path / 'file'}: not a directory",
        tmp_path / "empty": f"no summary.json under {tmp_path / 'empty'}",
        tmp_path / "bad": f"no readable summary.json under {tmp_path / 'bad'}",
    }
    (tmp_path / "file").write_text("")
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "empty" / "0", ["seed=0"], None)
    write_run(tmp_path / "bad" / "0", [], "[1, 2]")
    for path, message in cases.items():
        for flags in ([], ["--json"]):
            status, out, err = run_cli(cli, capsys, str(path), *flags)
            assert (status, out) == (1, "")
            assert err.splitlines()[-1] == f"audit_report: error: {message}"
    assert "skipped 0: summary.json is a list, not an object" in err


# --- collect_sweep's figure --------------------------------------------------------------------


def write_sweep(sweep: Path, with_audit: bool) -> None:
    """Two noise levels x two seeds, and a non-private job; audited when `with_audit`."""
    estimates = {0.5: ((0.0, 0.0, 0.3), (2.0, 1.0, "inf")), 2.0: (("inf",) * 3, ("inf",) * 3)}
    job = 0
    for noise, epsilon in ((0.5, 8.0), (2.0, 1.0)):
        for seed in (0, 1):
            summary = audited(epsilon, *estimates[noise]) if with_audit else {}
            summary |= {"privacy/epsilon": epsilon, "final/eval_accuracy": 0.6 + seed / 10}
            overrides = [
                "mechanism=gaussian",
                f"mechanism.noise_multiplier={noise}",
                f"seed={seed}",
            ]
            write_run(sweep / str(job), overrides, summary)
            job += 1
    summary = audited(None, (5.0, 4.0, 6.0), (7.0, 6.0, 8.0)) if with_audit else {}
    write_run(sweep / str(job), ["mechanism=none"], summary | {"final/eval_accuracy": 0.9})


@pytest.mark.parametrize("with_audit", [True, False])
def test_collect_sweep_draws_audit_epsilon_only_with_audits(
    collect_sweep: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path, with_audit: bool
) -> None:
    write_sweep(tmp_path / "sweep", with_audit)
    out = tmp_path / "out"
    status = collect_sweep.main([str(tmp_path / "sweep"), "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stderr
    result = json.loads(stdout)
    png = out / "audit_epsilon.png"
    if with_audit:
        assert result["png_audit"] == str(png)
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC
    else:
        assert "png_audit" not in result and not png.exists()
        assert (out / "privacy_utility.png").exists()


def test_audit_figure_draws_points_edges_and_notes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_sweep(tmp_path, with_audit=True)
    rows, _ = collect(tmp_path, find_jobs(tmp_path), pytest.fail)
    drawn: dict[str, Any] = {}
    monkeypatch.setattr(
        audit,
        "finish",
        lambda fig, ax, labels, legend, path: drawn.update(ax=ax, labels=labels, legend=legend),
    )
    audit.draw_audit_epsilon(rows, lambda row: row["group"], "group", "t", tmp_path / "x.png")
    ax, labels = drawn["ax"], drawn["labels"]
    top = 1.15 * 8.0  # the largest finite epsilon or interval end
    assert ax.get_ylim() == pytest.approx((-0.02 * top, top)) == ax.get_xlim()
    assert labels.title == (
        f"t\nepsilon estimate vs accounted (delta = {DELTA:g})\n"
        "left out, without accounted epsilon (noise off): 1 jobs\n"
        "infinite estimates (triangles at the top): 4"
    )
    triangles = [
        np.asarray(c.get_offsets()).tolist()
        for c in ax.collections
        if isinstance(c, PathCollection)
    ]
    assert sorted(p for pts in triangles for p in pts) == [[1.0, top]] * 4
    bars = [c.lines[0].get_xydata().tolist() for c in ax.containers]
    assert sorted(p for pts in bars for p in pts) == [[8.0, 0.0]] * 2 + [[8.0, 2.0]] * 2
    identity = [ln for ln in ax.get_lines() if ln.get_label() == "y = x"]
    assert len(identity) == 1
    assert ax.get_legend_handles_labels()[1] == [  # one entry per group, then the markers
        "mechanism=gaussian mechanism.noise_multiplier=0.5",
        "mechanism=gaussian mechanism.noise_multiplier=2.0",
        "estimate (95% interval)",
        "all-iterates estimate",
        "y = x",
    ]


def test_a_bad_figure_in_a_sweep_names_the_job() -> None:
    with pytest.raises(CollectError, match="job 7: audit/epsilon_estimate is not a number"):
        audit.sweep_audit({"job": "7", "audit/epsilon_estimate": [1]})


def test_a_run_with_secrets_only_says_so(tmp_path: Path) -> None:
    summary = {"privacy/epsilon": 3.0, "audit/exposure/r1": 1.5, "audit/exposure_max": 12}
    verdict = audit_row(".", (), summary).verdict
    assert verdict.text == "no canaries: Secret Sharer exposure only"
