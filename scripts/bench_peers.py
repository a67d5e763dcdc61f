"""fedray against Flower and pfl-research on one identical workload, as JSON lines.

Every system trains the same FedAvg workload: fedray's own population (same seed, hence the same
clients and held-out clients) and model (same initial weights), the same local SGD (epochs,
batch size, learning rate), cohort and rounds; each evaluates its final model on the same
held-out clients (fedray's round deadline is lifted, so that, like the peers, it waits for the
whole cohort). fedray runs first, through its CLI (`python -m engine.app.run`), and the cohorts it
trained (its participation log) are handed to the peers, which train exactly those clients in
each round, shuffling each client's examples with fedray's own stream of that client and round:
every system runs the same computation, and the final accuracies agree up to float rounding.
Without fedray in `--systems`, the peers sample their own cohorts (`"same_cohorts": false`).
Each peer runs `scripts/peers/<peer>_workload.py` with the python of its own venv under
`.bench/` (see `peerbench.venvs`), created here once with `python -m venv` and pip.

Each (system, case) runs in a fresh subprocess, at most `--timeout` seconds (a case a system
cannot finish in time prints a "skipped" line). `steady_s_per_round` is the mean wall time of
rounds 1..R-1, `cold_start_s` runs to the end of round 0, `driver_peak_rss_mib` is the driver's
peak RSS (see `peerbench.systems`).

fedray's line carries `speedup_vs_<peer>` (the peer's steady s/round over fedray's) and
`accuracy_agrees_<peer>`: |accuracy difference| <= max(`--accuracy-tolerance`, 3 x seed std)
(the std when `--seeds` > 1). A case whose accuracies disagree prints a "void" line: its timings
compare different computations (see `peerbench.compare`).

Usage:
    python scripts/bench_peers.py [--systems fedray,flower,pfl] [--models logreg,cnn]
        [--cohorts 10,100] [--populations 1000,100000,1000000] [--rounds 20] [--seed 0]
        [--seeds 1] [--timeout 600] [--bench-dir .bench]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCRIPTS_DIR = Path(__file__).resolve().parent
if str(SCRIPTS_DIR) not in sys.path:  # imported by path (the tests), not run as a script
    sys.path.insert(0, str(SCRIPTS_DIR))

from peerbench.cases import MODEL_TABLE, REPO_ROOT, SYSTEMS, Case  # noqa: E402
from peerbench.driver import log, run_case  # noqa: E402
from peerbench.venvs import prepare_peers  # noqa: E402


def _csv(text: str, kind: type[Any]) -> list[Any]:
    return [kind(item) for item in text.split(",") if item]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--models", default=",".join(MODEL_TABLE))
    parser.add_argument("--cohorts", default="10,100")
    parser.add_argument("--populations", default="1000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="seeds per case, for accuracy std")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per system/case")
    parser.add_argument("--accuracy-tolerance", type=float, default=0.02)
    parser.add_argument("--bench-dir", type=Path, default=REPO_ROOT / ".bench")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2: round 0 is excluded from the steady statistics")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    for flag, chosen, known in (
        ("--systems", _csv(args.systems, str), SYSTEMS),
        ("--models", _csv(args.models, str), tuple(MODEL_TABLE)),
    ):
        unknown = set(chosen) - set(known)
        if unknown or not chosen:
            parser.error(f"{flag}: unknown or empty {sorted(unknown)}; choose from {known}")
    try:
        _csv(args.cohorts, int), _csv(args.populations, int)
    except ValueError as error:
        parser.error(str(error))
    return args


def plan(args: argparse.Namespace) -> list[Case]:
    """Every model x population x cohort of the command line, in that order."""
    return [
        Case(model, num_clients, cohort, args.rounds, args.seed)
        for model in _csv(args.models, str)
        for num_clients in _csv(args.populations, int)
        for cohort in _csv(args.cohorts, int)
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark."""
    args = parse_args(argv)
    systems = sorted(_csv(args.systems, str), key=SYSTEMS.index)  # fedray first
    pythons = prepare_peers(systems, args.bench_dir.resolve(), log)
    for case in plan(args):
        run_case(case, systems, pythons, args)


if __name__ == "__main__":
    main()
