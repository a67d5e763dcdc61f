"""Result lines, and the comparison of fedray's result with each peer's.

fedray's line carries `speedup_vs_<peer>` (the peer's steady s/round over fedray's) and
`accuracy_agrees_<peer>`: |accuracy difference| <= max(tolerance, 3 x seed std) (the std when
the case ran several seeds). A peer whose accuracy disagrees gets a "void" line: the timings
compare different computations. Every "ok" line says whether the peers trained fedray's own
cohorts (`same_cohorts`); with them, and fedray's shuffling streams, the accuracies agree up to
float rounding.
"""

from __future__ import annotations

from typing import Any

from peerbench.cases import Case

CASE_KEYS = ("model", "population", "cohort")


def result_line(
    system: str, case: Case, measured: dict[str, Any], same_cohorts: bool
) -> dict[str, Any]:
    """A finished case's JSON line.

    Args:
        system: The system that ran it.
        case: The case.
        measured: Its measurements.
        same_cohorts: Whether the peers trained fedray's cohorts (for fedray: shared them).
    """
    return {
        "bench": "peers",
        "system": system,
        "status": "ok",
        **case.describe(),
        **measured,
        "same_cohorts": same_cohorts,
    }


def skipped_line(system: str, case: Case, reason: str) -> dict[str, Any]:
    """The JSON line of a case that `system` did not run or finish."""
    return {
        "bench": "peers",
        "system": system,
        "status": "skipped",
        **case.describe(),
        "reason": reason,
    }


def agrees(accuracy: float, other: float, tolerance: float, seed_std: float | None) -> bool:
    """Whether two final accuracies agree within noise: |diff| <= max(tolerance, 3 x std)."""
    bound = max(tolerance, 3.0 * seed_std) if seed_std is not None else tolerance
    return abs(accuracy - other) <= bound


def compare(
    fedray: dict[str, Any], peers: dict[str, dict[str, Any]], tolerance: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The fedray line with a speedup and agreement per finished peer, and the void lines.

    Args:
        fedray: fedray's result line (status "ok").
        peers: The peers' result lines of the same case, by system.
        tolerance: Smallest accuracy difference that voids a comparison.

    Returns:
        fedray's line with `speedup_vs_<peer>` and `accuracy_agrees_<peer>` for each peer that
        finished, and one "void" line per peer whose accuracy disagrees with fedray's.
    """
    line, voids = dict(fedray), []
    for name, peer in peers.items():
        if peer.get("status") != "ok":
            line[f"speedup_vs_{name}"] = None
            continue
        speedup = peer["steady_s_per_round"] / fedray["steady_s_per_round"]
        line[f"speedup_vs_{name}"] = round(speedup, 3)
        stds = [s for s in (fedray.get("accuracy_std"), peer.get("accuracy_std")) if s is not None]
        ok = agrees(
            fedray["final_accuracy"], peer["final_accuracy"], tolerance, max(stds, default=None)
        )
        line[f"accuracy_agrees_{name}"] = ok
        if not ok:
            voids.append(void_line(fedray, name, peer))
    return line, voids


def fedray_lines(
    fedray: dict[str, Any], peers: dict[str, dict[str, Any]], tolerance: float
) -> list[dict[str, Any]]:
    """The fedray line, compared with the peers' (see `compare`) if it finished; void lines."""
    if fedray["status"] != "ok":
        return [fedray]
    line, voids = compare(fedray, peers, tolerance)
    return [line, *voids]


def void_line(fedray: dict[str, Any], name: str, peer: dict[str, Any]) -> dict[str, Any]:
    """The "void" line of peer `name`, whose final accuracy disagrees with fedray's."""
    cohorts = "the same cohorts" if peer.get("same_cohorts") else "cohorts of their own"
    return {
        "bench": "peers",
        "status": "void",
        "systems": ["fedray", name],
        **{key: fedray[key] for key in CASE_KEYS if key in fedray},
        "same_cohorts": bool(peer.get("same_cohorts")),
        "reason": (
            f"final accuracies disagree: fedray {fedray['final_accuracy']:.4f}, "
            f"{name} {peer['final_accuracy']:.4f} (trained on {cohorts}); "
            "the speed comparison is void"
        ),
    }
