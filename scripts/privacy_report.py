"""Plan a private launch: the privacy and the error of a mechanism before the run starts.

Prints one JSON object per mechanism: the sensitivity under (k, b), rho-zCDP, epsilon(delta) by
the RDP and the PLD accountants, and the expected prefix-sum error (standard deviation, in units
of the clip norm; max and mean over rounds). With --target-epsilon instead of
--noise-multiplier, the noise multiplier that meets the target is found (from dp-accounting's
exact Gaussian calibration) and printed too. With --compare, every mechanism is reported at the
same rho, so their errors compare directly.

Mechanisms are built from the Hydra config group `mechanism/` and prepared for (n, k, b),
exactly as a run builds them.

Example:
    python scripts/privacy_report.py --mechanism tree --noise-multiplier 7 --rounds 2000 \
        --max-participations 6 --min-separation 314 --delta 1e-10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir

from engine.app.build import build_mechanism
from engine.app.config import register_configs
from engine.app.run import CONFIG_DIR
from mechanisms.accounting import noise_for_epsilon, privacy_cost
from mechanisms.base import Mechanism
from mechanisms.participation import ParticipationBound

MECHANISMS = ("gaussian", "tree", "banded_mf", "blt")


def make_mechanism(
    name: str, rounds: int, bound: ParticipationBound, overrides: Sequence[str] = ()
) -> Mechanism:
    """The mechanism of config option `mechanism=<name>`, prepared for this (n, k, b)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"mechanism={name}", *overrides])
    return build_mechanism(cfg, rounds, bound)


def prefix_error(mechanism: Mechanism, rounds: int, noise_multiplier: float) -> np.ndarray:
    """Std of the error of each round's prefix sum: sigma ||(A C^-1)_t|| (A: prefix sums)."""
    _, decoder = mechanism.matrices(rounds)
    return noise_multiplier * np.linalg.norm(np.cumsum(decoder, axis=0), axis=1)


def report(
    name: str, mechanism: Mechanism, args: argparse.Namespace, noise_multiplier: float | None
) -> dict[str, Any]:
    """One mechanism's figures at `noise_multiplier` (None: the one meeting the target)."""
    k, b, n = args.max_participations, args.min_separation, args.rounds
    sens_sq = mechanism.sensitivity_squared(n, k, b)
    if noise_multiplier is None:
        noise_multiplier = noise_for_epsilon(sens_sq, args.target_epsilon, args.delta)
    scaled = _with_noise(mechanism, noise_multiplier)
    cost = privacy_cost(scaled, n, k, b, args.delta)
    error = prefix_error(mechanism, n, noise_multiplier)
    return {
        "mechanism": name,
        "rounds": n,
        "max_participations": k,
        "min_separation": b,
        "noise_multiplier": noise_multiplier,
        "sensitivity_squared": cost.sensitivity_squared,
        "rho": cost.rho,
        "epsilon_rdp": cost.epsilon_rdp,
        "epsilon_pld": cost.epsilon_pld,
        "delta": args.delta,
        "prefix_error_max": float(error.max()),
        "prefix_error_mean": float(error.mean()),
    }


def _with_noise(mechanism: Mechanism, noise_multiplier: float) -> Mechanism:
    """A copy of a frozen mechanism dataclass with another noise multiplier."""
    return dataclasses.replace(mechanism, noise_multiplier=noise_multiplier)  # type: ignore[type-var]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mechanism", choices=MECHANISMS, default="tree")
    noise = parser.add_mutually_exclusive_group(required=True)
    noise.add_argument("--noise-multiplier", type=float)
    noise.add_argument("--target-epsilon", type=float)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--max-participations", type=int, default=None)
    parser.add_argument("--min-separation", type=int, default=1)
    parser.add_argument("--delta", type=float, default=1e-10)
    parser.add_argument("--restart-every", type=int, default=None, help="tree restarts")
    parser.add_argument("--efficient", action="store_true", help="tree: Honaker estimator")
    parser.add_argument("--compare", action="store_true", help="all mechanisms at equal rho")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.min_separation < 1:
        parser.error("--rounds and --min-separation must be >= 1")
    bound = ParticipationBound(args.max_participations, args.min_separation)
    args.max_participations = bound.resolved(args.rounds)
    args.bound = bound
    return args


def _overrides(name: str, args: argparse.Namespace) -> list[str]:
    if name != "tree":
        return []
    restart = "null" if args.restart_every is None else str(args.restart_every)
    return [f"mechanism.restart_every={restart}", f"mechanism.efficient={args.efficient}"]


def main(argv: Sequence[str] | None = None) -> None:
    """Prints the report (one JSON object per mechanism)."""
    args = parse_args(argv)
    names = MECHANISMS if args.compare else (args.mechanism,)
    built = {n: make_mechanism(n, args.rounds, args.bound, _overrides(n, args)) for n in names}
    first = report(args.mechanism, built[args.mechanism], args, args.noise_multiplier)
    for name in names:
        if name == args.mechanism:
            line = first
        else:  # the same rho as the first mechanism
            sens_sq = built[name].sensitivity_squared(
                args.rounds, args.max_participations, args.min_separation
            )
            line = report(name, built[name], args, math.sqrt(sens_sq / (2 * first["rho"])))
        print(json.dumps(line), flush=True)
        print(
            f"{name:>10}: sigma {line['noise_multiplier']:.4g}  rho {line['rho']:.4g}  "
            f"eps {min(line['epsilon_rdp'], line['epsilon_pld']):.4g}  "
            f"prefix error max {line['prefix_error_max']:.4g}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
