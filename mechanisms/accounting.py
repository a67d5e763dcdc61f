"""The accountant: from (mechanism, noise multiplier, participation bound, rounds) to rho and eps.

rho = sens(C; k, b)^2 / (2 sigma^2) is the zCDP of the whole release. dp-accounting turns it into
epsilon(delta) twice: with the RDP accountant (`ZCDpEvent(rho)`), and with the PLD accountant as
`GaussianDpEvent(1 / sqrt(2 rho))`. The second is exact here, not merely zCDP-equivalent: the
release x + C^-1 z is a Gaussian mechanism whose sensitivity (in the C-encoded space) is
sens(C; k, b), i.e. mu-GDP with mu = sens / sigma, adaptively composed (Denisov et al. 2022).
The reported epsilon is the smaller of the two; both are valid. The noise multiplier that meets a
target epsilon starts from dp-accounting's exact Gaussian calibration (`get_sigma_gaussian`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError, require
from mechanisms.base import Mechanism, require_noise_multiplier
from mechanisms.ddp.accounting import ddp_epsilon, rdp_per_round
from mechanisms.ddp.mechanism import DistributedMechanism
from mechanisms.participation import (
    ObservedParticipation,
    ParticipationBound,
    participations_that_fit,
)


@dataclass(frozen=True)
class PrivacyCost:
    """What a release of `rounds` rounds costs.

    Guarantees:
        User-level replace-with-zero adjacency (dp-accounting's REPLACE_SPECIAL; for Gaussian
        sums the same sensitivity as add/remove, which the PLD accountant is given). Holds for
        clients that participate at most `max_participations` times, any two rounds at least
        `min_separation` apart, and whose clipped updates have norm <= the clip norm.

    Attributes:
        rounds: n.
        max_participations: k used.
        min_separation: b used.
        sensitivity_squared: sens(C; k, b)^2.
        rho: zCDP.
        epsilon_rdp: epsilon(delta) by the RDP accountant.
        epsilon_pld: epsilon(delta) by the PLD accountant.
        delta: delta.
    """

    rounds: int
    max_participations: int
    min_separation: int
    sensitivity_squared: float
    rho: float
    epsilon_rdp: float
    epsilon_pld: float
    delta: float

    @property
    def epsilon(self) -> float:
        """The tighter of the two epsilons."""
        return min(self.epsilon_rdp, self.epsilon_pld)

    def metrics(self, prefix: str = "privacy/") -> dict[str, float]:
        """The cost as flat metrics."""
        return {
            f"{prefix}rho": self.rho,
            f"{prefix}epsilon": self.epsilon,
            f"{prefix}epsilon_rdp": self.epsilon_rdp,
            f"{prefix}epsilon_pld": self.epsilon_pld,
            f"{prefix}delta": self.delta,
        }


# dp_accounting's default PLD discretisation step.
_PLD_STEP = 1e-4


def epsilons(rho: float, delta: float) -> tuple[float, float]:
    """epsilon(delta) of rho-zCDP: (RDP accountant, PLD accountant)."""
    if rho == 0:
        return 0.0, 0.0
    import dp_accounting  # imported here: 0.8 s (scipy) that a Ray worker never needs
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    rdp = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL
    )
    rdp.compose(dp_accounting.dp_event.ZCDpEvent(rho))
    epsilon_rdp = float(rdp.get_epsilon(delta))
    # The PLD's grid spans the privacy loss's range, which grows as 1 / sigma**2: beyond
    # epsilon 100 its step grows with epsilon, or a tiny noise multiplier (0.03 over 100
    # participations) would need a grid of ~1e8 points, gigabytes. Unchanged below 100.
    pld = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=_PLD_STEP * max(1.0, epsilon_rdp / 100.0),
    )
    pld.compose(dp_accounting.GaussianDpEvent(1.0 / math.sqrt(2.0 * rho)))
    return epsilon_rdp, float(pld.get_epsilon(delta))


def privacy_cost(
    mechanism: Mechanism, rounds: int, max_participations: int, min_separation: int, delta: float
) -> PrivacyCost:
    """The cost of `rounds` rounds of `mechanism` for a (k, b)-participating client.

    Raises:
        ConfigError: when the mechanism adds no noise (epsilon would be infinite).
    """
    sigma = mechanism.noise_multiplier
    require_noise_multiplier(sigma, "mechanism.noise_multiplier")
    sens_sq = mechanism.sensitivity_squared(rounds, max_participations, min_separation)
    if isinstance(mechanism, DistributedMechanism):
        return _distributed_cost(mechanism, rounds, max_participations, min_separation, delta)
    rho = sens_sq / (2.0 * sigma**2)
    rdp, pld = epsilons(rho, delta)
    return PrivacyCost(rounds, max_participations, min_separation, sens_sq, rho, rdp, pld, delta)


def _distributed_cost(
    mechanism: DistributedMechanism, rounds: int, k: int, b: int, delta: float
) -> PrivacyCost:
    """The cost of a distributed mechanism: its RDP (`mechanisms.ddp.accounting`), k rounds.

    Its noise is independent every round, so a client is charged for the participations that
    fit, min(k, ceil(n / b)). Both epsilons are the RDP one (the distributed mechanisms have no
    PLD accounting here); rho is the largest RDP(alpha) / alpha over the proven orders.
    """
    params, choice = mechanism.configuration
    fit = participations_that_fit(rounds, b, k)
    one = rdp_per_round(params, choice)
    epsilon = ddp_epsilon(params, choice, fit, delta)
    rho = max(fit * value / alpha for alpha, value in one.items())
    sens_sq = mechanism.sensitivity_squared(rounds, k, b)
    return PrivacyCost(rounds, k, b, sens_sq, rho, epsilon, epsilon, delta)


def noise_for_epsilon(sensitivity_squared: float, target_epsilon: float, delta: float) -> float:
    """The smallest noise multiplier (to 0.05%) whose reported epsilon meets `target_epsilon`.

    Starts from the exact calibration of the Gaussian mechanism (Balle and Wang 2018, as
    dp-accounting's `get_sigma_gaussian`): sigma_1 for sensitivity 1 meets the target exactly,
    so sigma = sens sigma_1 does for the whole release (a Gaussian mechanism of sensitivity sens
    in the C-encoded space). It is then nudged up until the reported epsilon (the tighter of
    RDP and PLD, whose discretisation stays above the exact curve) is within the target.

    Guarantees:
        The returned sigma's reported epsilon (what `privacy_cost` gives for this sens^2) is
        <= target_epsilon at `delta`; 0.9995 sigma's may not be.

    Raises:
        ConfigError: If the target is not > 0.
    """
    require(target_epsilon > 0, "target_epsilon", f"must be > 0, got {target_epsilon}")
    import dp_accounting

    sigma = math.sqrt(sensitivity_squared) * dp_accounting.get_sigma_gaussian(target_epsilon, delta)
    while min(epsilons(sensitivity_squared / (2.0 * sigma**2), delta)) > target_epsilon:
        sigma *= 1.0005
    return sigma


# Past this, no noise "meets" a target: the noise is so much larger than a clipped update that
# the model cannot move; a sign of a target or delta far too small for the run.
MAX_NOISE_MULTIPLIER = 1e6


def calibrated(
    mechanism: Mechanism,
    rounds: int,
    bound: ParticipationBound,
    target_epsilon: float,
    delta: float,
) -> Mechanism:
    """`mechanism` with the smallest noise multiplier whose planned epsilon meets the target.

    The planned epsilon is `planned`'s: the policy's declared (k, b), `rounds` rounds, and the
    mechanism's own sensitivity (its factorisation and options; `mechanism` must be prepared
    for this (n, k, b)). Its noise multiplier on entry is ignored.

    Guarantees:
        `planned(result, rounds, bound, delta).epsilon <= target_epsilon`, and a noise
        multiplier 0.05% smaller may not meet it (see `noise_for_epsilon`).

    Raises:
        ConfigError: under `privacy.target_epsilon` when no noise multiplier up to
            MAX_NOISE_MULTIPLIER meets the target.
    """
    k, b = bound.resolved(rounds), bound.min_separation
    sens_sq = mechanism.sensitivity_squared(rounds, k, b)
    try:
        sigma = noise_for_epsilon(sens_sq, target_epsilon, delta)
    except (ArithmeticError, ValueError) as err:  # dp_accounting's search gave up
        sigma, why = math.inf, f" ({str(err).splitlines()[0]})"
    else:
        why = ""
    if not sigma <= MAX_NOISE_MULTIPLIER:
        raise ConfigError(
            "privacy.target_epsilon",
            f"{target_epsilon:g} (delta {delta:g}, k={k}, b={b}, {rounds} rounds) needs a noise "
            f"multiplier above {MAX_NOISE_MULTIPLIER:g}{why}; raise the target or delta",
        )
    untyped: Any = mechanism  # every noisy mechanism is a frozen dataclass
    prepared: Mechanism = dataclasses.replace(untyped, noise_multiplier=sigma)
    return prepared


def observed_bound(observed: ObservedParticipation, rounds: int) -> tuple[int, int]:
    """The tightest (k, b) that every client's committed rounds satisfy, after `rounds` rounds.

    The largest count, and the smallest gap between two rounds of one client (any b, i.e.
    `rounds`, when nobody joined twice).
    """
    k = max(observed.max_participations, 1)
    b = observed.min_separation if observed.min_separation is not None else rounds
    return k, b


def planned(
    mechanism: Mechanism, rounds: int, bound: ParticipationBound, delta: float
) -> PrivacyCost:
    """The cost of `rounds` rounds under the participation policy's declared bound."""
    return privacy_cost(mechanism, rounds, bound.resolved(rounds), bound.min_separation, delta)


class RunAccountant:
    """The privacy metrics of one run's rounds so far; each (n, k, b) is accounted once.

    `privacy/epsilon` (with rho, the two accountants' epsilons and delta) is the planned
    guarantee, from the policy's declared (k, b); `privacy/epsilon_observed` is the cost under
    the (k, b) observed in the ledger.

    Guarantees:
        The planned figure holds for every client, whatever the schedule turns out to be, as
        long as the policy enforces its bound and the noise is secret. The observed one holds
        only for the realised schedule, and only if that schedule did not depend on the
        clients' data: it is a diagnostic, never the run's guarantee.

    Args:
        mechanism: The run's mechanism (noise multiplier > 0).
        bound: The participation policy's declared bound.
        delta: The delta of every epsilon.
    """

    def __init__(self, mechanism: Mechanism, bound: ParticipationBound, delta: float) -> None:
        self._mechanism = mechanism
        self._bound = bound
        self._delta = delta
        self._costs: dict[tuple[int, int, int], PrivacyCost] = {}

    def metrics(self, rounds: int, observed: ObservedParticipation) -> dict[str, float]:
        """The planned cost of `rounds` rounds and the observed one, as flat metrics."""
        plan = self._cost(rounds, self._bound.resolved(rounds), self._bound.min_separation)
        seen = self._cost(rounds, *observed_bound(observed, rounds))
        return {**plan.metrics(), "privacy/epsilon_observed": seen.epsilon}

    def _cost(self, rounds: int, k: int, b: int) -> PrivacyCost:
        key = (rounds, k, b)
        if key not in self._costs:
            self._costs[key] = privacy_cost(self._mechanism, rounds, k, b, self._delta)
        return self._costs[key]
