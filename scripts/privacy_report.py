"""Plan a private launch: the privacy and the error of a mechanism before the run starts.

Prints one JSON object per mechanism: the sensitivity under (k, b), rho-zCDP, epsilon(delta) by
the RDP and the PLD accountants, and the expected prefix-sum error (standard deviation, in units
of the clip norm; max and mean over rounds). With --target-epsilon instead of
--noise-multiplier, the noise multiplier that meets the target is found (from dp-accounting's
exact Gaussian calibration) and printed too. With --compare, every mechanism is reported at the
same rho, so their errors compare directly.

Distributed DP (`--mechanism ddp_gaussian|ddp_skellam`, issue 18) needs no Hydra config: from
--bits, --cohort, --min-survivors, --dimension, --clip-norm, --k-stddevs and --noise-multiplier
it reports the chosen scale and per-client noise share (integer domain), the inflated L2 and L1
sensitivities, the RDP of one round, epsilon(delta) for a client of at most k participations,
the continuous Gaussian's epsilon at the same orders, and the decoded release's error variance
over the central Gaussian's (with n_min survivors, and with the whole cohort).

Mechanisms are built from the Hydra config group `mechanism/` and prepared for (n, k, b),
exactly as a run builds them.

Example:
    python scripts/privacy_report.py --mechanism tree --noise-multiplier 7 --rounds 2000 \
        --max-participations 6 --min-separation 314 --delta 1e-10
    python scripts/privacy_report.py --mechanism ddp_skellam --bits 20 --cohort 1000 \
        --min-survivors 800 --dimension 1000000 --noise-multiplier 1 --rounds 1000 \
        --max-participations 10 --delta 1e-6
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

from common.errors import ConfigError
from engine.app.build import build_mechanism
from engine.app.config import register_configs
from engine.app.run import CONFIG_DIR
from mechanisms.accounting import noise_for_epsilon, privacy_cost
from mechanisms.base import Mechanism
from mechanisms.ddp.accounting import ORDERS, ddp_epsilon, rdp_per_round
from mechanisms.ddp.params import DdpParams, choose
from mechanisms.participation import ParticipationBound

MECHANISMS = ("gaussian", "tree", "banded_mf", "blt")
DDP_MECHANISMS = {"ddp_gaussian": "gaussian", "ddp_skellam": "skellam"}
# The command-line flag of each DdpParams field (and of the accounting's keys).
DDP_FLAGS = {
    "bits": "--bits",
    "cohort_size": "--cohort",
    "min_survivors": "--min-survivors",
    "clip_norm": "--clip-norm",
    "dim": "--dimension",
    "noise_multiplier": "--noise-multiplier",
    "k_stddevs": "--k-stddevs",
    "beta": "--beta",
    "noise": "--mechanism",
    "max_participations": "--max-participations",
    "delta": "--delta",
}
# The orders of the RDP reported per round (epsilon minimises over all of ORDERS).
REPORTED_ORDERS = (2, 4, 8, 16, 32, 64, 128, 256)


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


def ddp_report(args: argparse.Namespace) -> dict[str, Any]:
    """The distributed mechanism's figures (raises ConfigError on bad input, keyed by field)."""
    params = DdpParams(
        bits=args.bits,
        cohort_size=args.cohort,
        min_survivors=args.cohort if args.min_survivors is None else args.min_survivors,
        clip_norm=args.clip_norm,
        dim=args.dimension,
        noise_multiplier=args.noise_multiplier,
        noise=DDP_MECHANISMS[args.mechanism],
        k_stddevs=args.k_stddevs,
        beta=args.beta,
    )
    choice = choose(params)
    k = args.max_participations
    rdp = rdp_per_round(params, choice, REPORTED_ORDERS)
    return {
        "mechanism": args.mechanism,
        "rounds": args.rounds,
        "max_participations": k,
        "min_separation": args.min_separation,
        "noise_multiplier": params.noise_multiplier,
        "bits": params.bits,
        "cohort": params.cohort_size,
        "min_survivors": params.min_survivors,
        "dimension": params.dim,
        "padded_dimension": params.padded_dim,
        "clip_norm": params.clip_norm,
        "k_stddevs": params.k_stddevs,
        "beta": params.beta,
        "scale": choice.scale,
        "local_noise_std": choice.local_noise_std,
        "l2_sensitivity": choice.l2_sensitivity,
        "l1_sensitivity": choice.l1_sensitivity,
        "rdp_per_round": {str(a): rdp[float(a)] for a in REPORTED_ORDERS},
        "epsilon": ddp_epsilon(params, choice, k, args.delta),
        "epsilon_central_gaussian": _gaussian_epsilon(params.noise_multiplier, k, args.delta),
        "delta": args.delta,
        "expected_error_ratio": choice.expected_error_ratio,
        "expected_error_ratio_full_cohort": (
            choice.error_variance_full_cohort / choice.central_variance
        ),
    }


def _gaussian_epsilon(noise_multiplier: float, k: int, delta: float) -> float:
    """Epsilon of k continuous Gaussian releases, RDP accountant at the ddp orders."""
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant(list(ORDERS))
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), k)
    return float(accountant.get_epsilon(delta))


def _ddp_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Prints the ddp report, or exits with one line naming the flag at fault."""
    try:
        line = ddp_report(args)
    except ConfigError as err:
        flag = DDP_FLAGS.get(err.key, err.key)
        parser.exit(2, f"{parser.prog}: error: {flag}: {err.reason}\n")
    print(json.dumps(line), flush=True)
    print(
        f"{args.mechanism}: scale {line['scale']:.4g}  local std {line['local_noise_std']:.4g}  "
        f"eps {line['epsilon']:.4g} (central {line['epsilon_central_gaussian']:.4g})  "
        f"error x{line['expected_error_ratio']:.4g}",
        file=sys.stderr,
    )


def _check_ddp_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """One line naming the flag when a ddp option is missing or does not apply."""

    def fail(flag: str, reason: str) -> None:
        parser.exit(2, f"{parser.prog}: error: {flag}: {reason}\n")

    if args.mechanism not in DDP_MECHANISMS:
        return
    if args.noise_multiplier is None:
        fail("--target-epsilon", "not supported with ddp mechanisms; give --noise-multiplier")
    if args.compare:
        fail("--compare", "not supported with ddp mechanisms")
    for flag in ("cohort", "dimension"):
        if getattr(args, flag) is None:
            fail(f"--{flag}", f"required with --mechanism {args.mechanism}")
    if not 0 < args.delta < 1:
        fail("--delta", f"must be in (0, 1), got {args.delta}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    args, _ = _parse(argv)
    return args


def _parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mechanism", choices=(*MECHANISMS, *DDP_MECHANISMS), default="tree")
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
    ddp = parser.add_argument_group("distributed DP (--mechanism ddp_gaussian|ddp_skellam)")
    ddp.add_argument("--bits", type=int, default=16, help="log2 of the SecAgg modulus")
    ddp.add_argument("--cohort", type=int, default=None, help="clients selected per round")
    ddp.add_argument("--min-survivors", type=int, default=None, help="default: the cohort")
    ddp.add_argument("--dimension", type=int, default=None, help="the model's parameters")
    ddp.add_argument("--clip-norm", type=float, default=1.0)
    ddp.add_argument("--k-stddevs", type=float, default=4.0, help="stddevs that fit in m/2")
    ddp.add_argument("--beta", type=float, default=math.exp(-0.5), help="rounding's beta")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.min_separation < 1:
        parser.error("--rounds and --min-separation must be >= 1")
    _check_ddp_args(args, parser)
    try:
        bound = ParticipationBound(args.max_participations, args.min_separation)
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: --{err.key.replace('_', '-')}: {err.reason}\n")
    args.max_participations = bound.resolved(args.rounds)
    args.bound = bound
    return args, parser


def _overrides(name: str, args: argparse.Namespace) -> list[str]:
    if name != "tree":
        return []
    restart = "null" if args.restart_every is None else str(args.restart_every)
    return [f"mechanism.restart_every={restart}", f"mechanism.efficient={args.efficient}"]


def main(argv: Sequence[str] | None = None) -> None:
    """Prints the report (one JSON object per mechanism)."""
    args, parser = _parse(argv)
    if args.mechanism in DDP_MECHANISMS:
        _ddp_main(args, parser)
        return
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
