"""Empirical privacy audits of a run or a sweep, read from its jobs' `summary.json`, judged.

A run with `audit=canaries` writes the one-run epsilon estimate of its canary clients (Andrew
et al. 2024), for the final model and for all iterates, each with a bootstrap 95% interval, and
for language models the Secret Sharer exposure of its secrets (Carlini et al. 2019). `read_audits`
reads every run under a directory (each dir holding a `summary.json`, at any depth) into an
`AuditRow` with a `Verdict` against the run's accounted epsilon (`judge`); `draw_audit_epsilon`
plots a sweep's estimates against the accounted epsilon. Exposures are reported, not judged.
Numbers may be null, or infinite as a JSON number or as the string "inf" / "Infinity".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reports.sweep import (
    CollectError,
    Row,
    Warn,
    find_jobs,
    fmt,
    natural_key,
    read_summary,
    read_yaml,
)
from reports.sweep_plots import Labels, delta_note, finish, group_colors, new_figure

ACCOUNTED = "privacy/epsilon"
PREFIX = "audit/epsilon_estimate"
ESTIMATES = (("estimate", ""), ("all-iterates estimate", "_all_iterates"))  # (name, key suffix)
EXPOSURE = "audit/exposure/r"  # + the repetitions r of the secrets
AUDIT_PNG_NAME = "audit_epsilon.png"
NOT_AUDITED, NO_ACCOUNTANT, NO_ESTIMATE = "not audited", "no accountant", "no estimate"
CONSISTENT, VIOLATION = "consistent", "VIOLATION"


def number(summary: Mapping[str, Any], key: str) -> float | None:
    """The summary's `key` as a float: None when absent, null or NaN; "inf" texts are infinite.

    Raises:
        CollectError: The value is neither a number nor a number's text.
    """
    value = summary.get(key)
    try:
        parsed = None if value is None else float(value if not isinstance(value, bool) else "")
    except (TypeError, ValueError) as err:
        raise CollectError(f"{key} is not a number: {value!r}") from err
    return None if parsed is None or math.isnan(parsed) else parsed


@dataclass(frozen=True)
class Estimate:
    """An epsilon estimate and its bootstrap 95% interval (each None when not written)."""

    name: str
    suffix: str  # of its summary keys: `audit/epsilon_estimate<suffix>`, `..._low`, `..._high`
    value: float | None
    low: float | None
    high: float | None

    @classmethod
    def read(cls, summary: Mapping[str, Any], name: str, suffix: str) -> Estimate:
        """The estimate `audit/epsilon_estimate<suffix>` of `summary`, with its interval."""
        keys = (PREFIX + suffix + end for end in ("", "_low", "_high"))
        return cls(name, suffix, *(number(summary, key) for key in keys))

    def text(self) -> str:
        """`value [low, high]`, `-` when there is no estimate."""
        if self.value is None:
            return "-"
        interval = f" [{fmt(self.low) or '-'}, {fmt(self.high) or '-'}]"
        interval = "" if self.low is None and self.high is None else interval
        return fmt(self.value) + interval


@dataclass(frozen=True)
class Verdict:
    """The outcome of an audit: `status` (one of the five), a sentence, and extra notes."""

    status: str
    text: str
    notes: tuple[str, ...] = ()


def judge(epsilon: float | None, estimates: Sequence[Estimate], audited: bool) -> Verdict:
    """The verdict of a run's estimates against its accounted `epsilon` (None: no accountant).

    Consistent when every estimate is at most `epsilon`, or above it with its interval's low end
    at most `epsilon`; a VIOLATION, naming the estimate, when a low end is above it (the point
    estimate when no interval was written). A "weak audit" note when every estimate is 0.

    Guarantees:
        None of its own: an estimate is a lower bound on the epsilon of the mechanism as run only
        under the assumptions of Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot
        Empirical Privacy Estimation for Federated Learning" (ICLR 2024): canary directions
        independent of the data and of each other, their cosines with the model's change close to
        Gaussian. So "consistent" proves nothing, and a VIOLATION (a 95% interval wholly above the
        accounted epsilon) is a privacy bug, an accountant that is wrong, or a 1-in-40 miss.
    """
    if not audited:
        return Verdict(NOT_AUDITED, NOT_AUDITED)
    given = [e for e in estimates if e.value is not None]
    if not given:
        return Verdict(NO_ESTIMATE, "no estimate: audit keys without an epsilon estimate")
    top = max(e.value for e in given if e.value is not None)
    notes = ("weak audit: estimate 0, the canaries were not detected",) if top == 0 else ()
    if epsilon is None:
        seen = ", the canaries are detected" if top > 0 else ""
        return Verdict(
            NO_ACCOUNTANT, f"no accountant (noise off): estimate {fmt(top)}{seen}", notes
        )
    above = [e for e in given if min(v for v in (e.low, e.value) if v is not None) > epsilon]
    if above:
        named = "; ".join(f"{e.name} {e.text()} > accounted {fmt(epsilon)}" for e in above)
        return Verdict(VIOLATION, f"VIOLATION: {named}", notes)
    within = [e.name for e in given if e.value is not None and e.value > epsilon]
    if within:
        notes = (*notes, f"{' and '.join(within)} above accounted, within the interval")
    return Verdict(CONSISTENT, CONSISTENT, notes)


@dataclass(frozen=True)
class AuditRow:
    """One run's audit: its figures and verdict.

    Attributes:
        job: The run's path relative to the directory read (`.` for the directory itself).
        overrides: Its Hydra overrides, as written in `.hydra/overrides.yaml`.
        epsilon: The accounted epsilon (None: no accountant, the noise is off).
        delta: The accounted delta.
        num_canaries: The canary clients inserted (None: not audited).
        estimates: The final-model and the all-iterates estimate (ESTIMATES).
        exposures: (r, mean exposure in bits of the secrets repeated r times), by r.
        exposure_max: log2 of the candidate count, the largest exposure possible.
        verdict: The verdict of `judge`.
    """

    job: str
    overrides: tuple[str, ...]
    epsilon: float | None
    delta: float | None
    num_canaries: float | None
    estimates: tuple[Estimate, ...]
    exposures: tuple[tuple[int, float | None], ...]
    exposure_max: float | None
    verdict: Verdict

    def ratios(self) -> tuple[float | None, ...]:
        """Each estimate / the accounted epsilon (None without both, or a zero epsilon)."""
        eps = self.epsilon
        if eps is None or eps <= 0 or math.isinf(eps):
            return tuple(None for _ in self.estimates)
        return tuple(None if e.value is None else e.value / eps for e in self.estimates)

    def as_json(self) -> dict[str, Any]:
        """The row as flat strict JSON: `estimate<suffix>[_low|_high]`, `ratio<suffix>`, ...

        Infinities are the strings "inf" / "-inf".
        """
        line: dict[str, Any] = {"job": self.job, "overrides": list(self.overrides)}
        line |= {"epsilon": self.epsilon, "delta": self.delta, "num_canaries": self.num_canaries}
        for e, ratio in zip(self.estimates, self.ratios(), strict=True):
            line |= {f"estimate{e.suffix}": e.value, f"estimate{e.suffix}_low": e.low}
            line |= {f"estimate{e.suffix}_high": e.high, f"ratio{e.suffix}": ratio}
        line["exposures"] = {f"r{r}": json_number(bits) for r, bits in self.exposures}
        line["exposure_max"] = self.exposure_max
        line |= {"status": self.verdict.status, "verdict": self.verdict.text}
        line["notes"] = list(self.verdict.notes)
        return {k: json_number(v) if isinstance(v, float) else v for k, v in line.items()}


def json_number(value: float | None) -> float | str | None:
    """`value` for strict JSON: infinities as "inf" / "-inf"."""
    if value is None or math.isfinite(value):
        return value
    return "inf" if value > 0 else "-inf"


def is_exposure(key: str) -> bool:
    """Whether `key` is an exposure, `audit/exposure/r<repetitions>`."""
    return key.startswith(EXPOSURE) and key[len(EXPOSURE) :].isdigit()


def audit_row(job: str, overrides: Sequence[str], summary: Mapping[str, Any]) -> AuditRow:
    """The audit of one run from its summary (or a sweep row, which holds the same keys).

    Raises:
        CollectError: A figure of the summary is not a number.
    """
    epsilon = number(summary, ACCOUNTED)
    estimates = tuple(Estimate.read(summary, name, suffix) for name, suffix in ESTIMATES)
    repeats = sorted(int(k[len(EXPOSURE) :]) for k in summary if is_exposure(k))
    verdict = judge(epsilon, estimates, any(k.startswith("audit/") for k in summary))
    if verdict.status == NO_ESTIMATE and repeats:  # secrets without canaries
        verdict = Verdict(NO_ESTIMATE, "no canaries: Secret Sharer exposure only")
    return AuditRow(
        job=job,
        overrides=tuple(map(str, overrides)),
        epsilon=epsilon,
        delta=number(summary, "privacy/delta"),
        num_canaries=number(summary, "audit/num_canaries"),
        estimates=estimates,
        exposures=tuple((r, number(summary, f"{EXPOSURE}{r}")) for r in repeats),
        exposure_max=number(summary, "audit/exposure_max"),
        verdict=verdict,
    )


# --- reading a run or a sweep ------------------------------------------------------------------


def find_runs(root: Path) -> list[Path]:
    """The runs under `root`: dirs holding a summary.json or a Hydra job's `.hydra`, sorted."""
    runs = {path.parent for path in root.rglob("summary.json")} | set(find_jobs(root))
    return sorted(runs, key=lambda run: natural_key(run.relative_to(root).as_posix()))


def read_audits(root: Path, warn: Warn) -> list[AuditRow]:
    """The audit of every run under `root` (a run dir or a sweep dir); runs skipped are warned of.

    Raises:
        CollectError: No run under `root` has a readable summary.json.
    """
    runs = find_runs(root)
    if not any((run / "summary.json").is_file() for run in runs):
        raise CollectError(f"no summary.json under {root}")
    rows = []
    for run in runs:
        name = run.relative_to(root).as_posix()
        try:
            overrides = read_yaml(run / ".hydra" / "overrides.yaml") or []
            rows.append(audit_row(name, overrides, read_summary(run)))
        except (CollectError, OSError, yaml.YAMLError, TypeError) as err:
            warn(f"skipped {name}: {err}")
    if not rows:
        raise CollectError(f"no readable summary.json under {root}")
    return rows


# --- a sweep's figure --------------------------------------------------------------------------


def has_audit(rows: Sequence[Row]) -> bool:
    """Whether any job of a sweep's table has an epsilon estimate."""
    return any(row.get(PREFIX + suffix) is not None for row in rows for _, suffix in ESTIMATES)


def draw_audit_epsilon(
    rows: Sequence[Row], group: Callable[[Row], str], legend: str, title: str, path: Path
) -> None:
    """Each job's estimates (interval as error bars) against its accounted epsilon, and y = x.

    `rows` are a sweep's table (`reports.sweep.collect`); jobs without an accounted epsilon are
    left out (said in the title), infinite estimates are triangles on the top edge.
    """
    audits = [(group(row), sweep_audit(row)) for row in rows if has_audit([row])]
    points = [(g, a) for g, a in audits if a.epsilon is not None and math.isfinite(a.epsilon)]
    fig, ax = new_figure(9.0)
    top = plot_top([a for _, a in points])
    colors = group_colors([g for g, _ in points])
    for name, audit in points:
        draw_estimates(ax, audit, colors[name], top)
    if points:  # the legend: a dot per group, then the markers' meaning
        for name, color in colors.items():
            ax.plot([], [], "o", color=color, label=name)
        ax.plot([], [], "o", color="black", label="estimate (95% interval)")
        ax.plot([], [], "s", color="black", mfc="none", label="all-iterates estimate")
        ax.axline((0.0, 0.0), slope=1.0, color="grey", linestyle=":", label="y = x")
        ax.set_xlim(-0.02 * top, top)
        ax.set_ylim(-0.02 * top, top)
    head = f"{title}\nepsilon estimate vs accounted{delta_note(ACCOUNTED, rows)}"
    left_out, infinite = len(audits) - len(points), sum(audit_infinities(a) for _, a in points)
    notes = [f"left out, without accounted epsilon (noise off): {left_out} jobs"] * (left_out > 0)
    notes += [f"infinite estimates (triangles at the top): {infinite}"] * (infinite > 0)
    labels = Labels("accounted epsilon", "empirical epsilon", "\n".join([head, *notes]))
    finish(fig, ax, labels, legend, path)


def audit_infinities(audit: AuditRow) -> int:
    """How many of the run's estimates are infinite."""
    return sum(e.value == math.inf for e in audit.estimates)


def sweep_audit(row: Row) -> AuditRow:
    """The audit of a job of a sweep's table; CollectError, naming the job, on a bad figure."""
    try:
        return audit_row(row["job"], (), row)
    except CollectError as err:
        raise CollectError(f"job {row['job']}: {err}") from err


def plot_top(audits: Sequence[AuditRow]) -> float:
    """The axes' upper limit: above every finite epsilon and interval end, at least 1."""
    values = [a.epsilon for a in audits] + [
        v for a in audits for e in a.estimates for v in (e.value, e.low, e.high)
    ]
    return 1.15 * max([1.0, *(v for v in values if v is not None and math.isfinite(v))])


def draw_estimates(ax: Any, audit: AuditRow, color: str, top: float) -> None:
    """The run's estimates at its accounted epsilon: filled circle, hollow square, or triangle."""
    for estimate, marker in zip(audit.estimates, ("o", "s"), strict=True):
        value, face = estimate.value, color if marker == "o" else "none"
        if value is None:
            continue
        if math.isinf(value):
            ax.scatter([audit.epsilon], [top], marker="^", color=color, clip_on=False)
        else:
            low, high = (value if v is None else v for v in (estimate.low, estimate.high))
            yerr = [[max(value - low, 0.0)], [max(min(high, top) - value, 0.0)]]
            style = {"fmt": marker, "color": color, "mfc": face, "capsize": 3}
            ax.errorbar([audit.epsilon], [value], yerr=yerr, **style)
