"""mechanisms/accounting.py: rho from sensitivity, epsilon from dp-accounting, planning."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr

from common.errors import ConfigError
from mechanisms import NoNoise
from mechanisms.accounting import (
    RunAccountant,
    epsilons,
    noise_for_epsilon,
    observed_bound,
    planned,
    privacy_cost,
)
from mechanisms.gaussian import GaussianMechanism
from mechanisms.participation import (
    ObservedParticipation,
    ParticipationBound,
    participations_that_fit,
)
from mechanisms.tree import TreeMechanism


def test_epsilons_are_dp_accountings_own():
    # Independent: compose the equivalent events directly.
    rho, delta = 0.37, 1e-8
    rdp = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL
    )
    rdp.compose(dp_accounting.dp_event.ZCDpEvent(rho))
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_accounting.GaussianDpEvent(1 / math.sqrt(2 * rho)))
    assert epsilons(rho, delta) == pytest.approx((rdp.get_epsilon(delta), pld.get_epsilon(delta)))
    assert epsilons(rho, delta)[1] <= epsilons(rho, delta)[0] + 1e-6  # PLD is the tighter


def test_tree_k1_matches_dp_accountings_tree_event():
    # dp-accounting's SingleEpochTreeAggregationDpEvent(1.13, 1600) under REPLACE_SPECIAL is
    # rho = depth / (2 sigma^2) = 11 / (2 * 1.13^2) = 4.307307.
    cost = privacy_cost(TreeMechanism(noise_multiplier=1.13), 1600, 1, 1600, 1e-10)
    assert cost.rho == pytest.approx(4.307307, abs=1e-6)
    rdp = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL
    )
    rdp.compose(dp_accounting.dp_event.SingleEpochTreeAggregationDpEvent(1.13, 1600))
    assert cost.epsilon_rdp == pytest.approx(rdp.get_epsilon(1e-10), rel=1e-9)


def test_gaussian_rho_is_k_over_two_sigma_squared():
    cost = privacy_cost(GaussianMechanism(noise_multiplier=2.0), 100, 5, 10, 1e-6)
    assert cost.sensitivity_squared == 5
    assert cost.rho == pytest.approx(5 / 8)


@pytest.mark.parametrize(
    ("k", "b", "rounds", "expected"), [(None, 1, 10, 10), (None, 4, 10, 3), (2, 4, 10, 2)]
)
def test_resolved_participations(k, b, rounds, expected):
    assert ParticipationBound(k, b).resolved(rounds) == expected
    assert participations_that_fit(rounds, b, k) == expected


def test_participations_that_fit_refuses_a_bad_bound():
    assert participations_that_fit(0, 3) == 0
    with pytest.raises(ValueError):
        participations_that_fit(10, 0)


@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
def test_noise_for_epsilon_meets_the_target_tightly(target):
    sens_sq, delta = 11.0, 1e-10
    sigma = noise_for_epsilon(sens_sq, target, delta)
    assert min(epsilons(sens_sq / (2 * sigma**2), delta)) <= target
    assert min(epsilons(sens_sq / (2 * (0.99 * sigma) ** 2), delta)) > target
    # It starts from the exact calibration, which the accountants' epsilons never undercut.
    assert sigma >= math.sqrt(sens_sq) * dp_accounting.get_sigma_gaussian(target, delta)


def test_no_noise_has_no_privacy_cost():
    with pytest.raises(ConfigError, match=r"mechanism\.noise_multiplier"):
        privacy_cost(NoNoise(), 10, 1, 1, 1e-6)


def _balle_wang_epsilon(rho: float, delta: float) -> float:
    """The exact epsilon(delta) of rho-zCDP Gaussian noise (mu-GDP, mu = sqrt(2 rho)).

    Balle and Wang 2018: delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu), solved
    for eps; fedray's own copy before it used dp-accounting's.
    """
    mu = math.sqrt(2.0 * rho)

    def excess(eps: float) -> float:
        return float(ndtr(mu / 2 - eps / mu)) - math.exp(eps + log_ndtr(-mu / 2 - eps / mu)) - delta

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
    return float(brentq(excess, 0.0, high, xtol=1e-12))


@pytest.mark.parametrize("rho", [1e-4, 1e-3, 0.01, 0.03, 0.1, 0.37, 1.0, 3.0, 10.0, 50.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-6, 1e-8, 1e-10, 1e-12])
def test_dp_accountings_gaussian_epsilon_is_the_exact_one(rho, delta):
    exact = dp_accounting.get_epsilon_gaussian(1 / math.sqrt(2 * rho), delta)
    assert abs(exact - _balle_wang_epsilon(rho, delta)) <= 1e-12


@pytest.mark.parametrize("rho", [0.01, 0.7, 5.0])
def test_gaussian_epsilon_is_the_pld_limit(rho):
    # dp-accounting's PLD with a fine grid converges to the exact Gaussian curve from above.
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=2e-5)
    pld.compose(dp_accounting.GaussianDpEvent(1 / math.sqrt(2 * rho)))
    exact = dp_accounting.get_epsilon_gaussian(1 / math.sqrt(2 * rho), 1e-8)
    assert exact <= pld.get_epsilon(1e-8) * (1 + 1e-9)
    assert exact == pytest.approx(pld.get_epsilon(1e-8), rel=1e-3)


def test_the_observed_epsilon_uses_the_ledgers_participation():
    mechanism = GaussianMechanism(noise_multiplier=1.0)
    accountant = RunAccountant(mechanism, ParticipationBound(None, 1), 1e-6)
    seen = ObservedParticipation(
        max_participations=3, min_separation=5, clients=9, contributions=20
    )
    assert observed_bound(seen, 40) == (3, 5)
    metrics = accountant.metrics(40, seen)
    assert metrics["privacy/epsilon_observed"] == pytest.approx(min(epsilons(3 / 2, 1e-6)))
    assert metrics["privacy/rho"] == pytest.approx(40 / 2)  # planned: (k, b) = (40, 1)
    never_twice = ObservedParticipation(
        max_participations=1, min_separation=None, clients=9, contributions=9
    )
    assert observed_bound(never_twice, 40) == (1, 40)
    observed = accountant.metrics(40, never_twice)["privacy/epsilon_observed"]
    assert observed == pytest.approx(min(epsilons(1 / 2, 1e-6)))


def test_planned_uses_the_declared_bound():
    mechanism = GaussianMechanism(noise_multiplier=1.0)
    assert planned(mechanism, 100, ParticipationBound(None, 10), 1e-6).max_participations == 10
    assert planned(mechanism, 100, ParticipationBound(4, 10), 1e-6).rho == pytest.approx(2.0)


def test_a_tiny_noise_multiplier_is_accounted_without_a_giant_grid():
    # sigma 0.03 over 100 participations: rho = 55,556. At the PLD's default step the grid
    # needs ~1e8 points: the run that found it was killed at 24 GB. Now ~2 s and ~300 MB.
    from mechanisms.accounting import epsilons

    rdp, pld = epsilons(100 / (2 * 0.03**2), 1e-5)
    assert 0.9 * rdp < pld <= rdp
    assert epsilons(0.5, 1e-5) == pytest.approx((4.7285, 4.3772), abs=1e-4)  # as before
