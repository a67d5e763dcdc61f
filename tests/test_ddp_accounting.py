"""mechanisms/ddp/params.py and accounting.py: the scale choice and the RDP of DDGauss/Skellam.

Golden vectors. `_independent` re-derives every number the way Google's reference
(google-research/federated, distributed_dp/accounting_utils.py) computes it, in its own
parametrisation and not the module's, with mpmath at 50 digits:

* the scale by bisection on the no-wrap condition k sqrt(var(s)) = 2**(bits - 1) (the module
  uses the closed form), var(s) as the reference's `heuristic_scale_factor` (rho = 1, the
  signal growing as N**2): (N c s)**2 / d' + N / 4 + N (z c s)**2 / n_min;
* sensitivities in model units, as the reference's `ddgauss_epsilon` / `skellam_epsilon` do:
  rounded_l2_norm_bound(c s) / s, l1 = l2 min(l2 s, sqrt(d'));
* DDGauss: Kairouz, Liu, Steinke 2021, Prop. 14 with l2_scale = l2 / (sqrt(n) sigma) in model
  units and tau = 10 sum exp(-2 (pi sigma s)**2 k / (k + 1)) (the reference's form);
* Skellam: Agarwal, Kairouz, Liu 2021, Theorem 3.5 in the reference's model-unit form
  a l2**2 / (2 mu) + min(((2a - 1) s l2**2 + 6 l1) / (4 s**3 mu**2), 3 l1 / (2 s mu)), mu the
  central variance in model units;
* k rounds: k times the RDP; epsilon = min over orders 2..128, 256 of
  rdp + log(1 - 1/a) - log(delta a) / (a - 1), floored at 0 (Canonne, Kamath, Steinke 2020,
  the conversion dp_accounting and tf-privacy's get_privacy_spent use), written out by hand.

GOLDEN holds what `_independent` printed (10 significant digits); `test_golden_vectors_are_
reproduced_independently` recomputes them, so the literals cannot drift from the formulas.

The reference itself agrees on all 8 settings to the 10 digits kept (2026-12-04): its
`heuristic_scale_factor`, `rounded_l2_norm_bound`, `ddgauss_epsilon` and `skellam_epsilon` at
commit 5e27a86 (q = 1, orders 2..128 and 256), run outside this repository with tf-privacy's
`get_privacy_spent` (the only TensorFlow dependency on that path) replaced by dp_accounting's
`compute_epsilon`, the same conversion. The reference's code is not in this repository.
"""

from __future__ import annotations

import math

import dp_accounting
import mpmath
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from mechanisms.ddp.accounting import (
    ORDERS,
    ddgauss_tau,
    ddp_epsilon,
    rdp_per_round,
    skellam_rdp,
)
from mechanisms.ddp.params import DdpParams, choose
from mechanisms.ddp.rounding import inflated_norm_bound

mpmath.mp.dps = 50

# (noise, bits, cohort N, n_min, clip c, dim d, z, k_stddevs, k rounds, delta)
SETTINGS = [
    ("gaussian", 20, 1000, 1000, 1.0, 1_000_000, 1.0, 4.0, 10, 1e-5),
    ("skellam", 20, 1000, 1000, 1.0, 1_000_000, 1.0, 4.0, 10, 1e-5),
    ("gaussian", 8, 100, 100, 0.5, 1000, 1.0, 4.0, 1, 1e-6),  # sigma_local ~ 1: tau counts
    ("skellam", 8, 100, 100, 0.5, 1000, 1.0, 4.0, 1, 1e-6),
    ("gaussian", 12, 100, 80, 0.1, 65_536, 0.7, 4.0, 50, 1e-10),
    ("skellam", 14, 500, 400, 2.0, 300_000, 1.5, 4.0, 200, 1e-8),
    ("gaussian", 16, 50, 40, 1.0, 4096, 0.5, 2.0, 5, 1e-5),
    ("skellam", 10, 64, 64, 1.0, 2**20, 2.0, 4.0, 3, 1e-5),
]

# (scale, local noise std per client, inflated l2 in the integer domain, epsilon)
GOLDEN = {
    0: (93774.30186, 2965.403799, 93776.20231, 19.80229947),
    1: (93774.30186, 2965.403799, 93776.20231, 19.80229947),
    2: (19.2660692, 0.9633034599, 19.3501522, 12.10550185),
    3: (19.2660692, 0.9633034599, 19.3501522, 12.06668996),
    4: (5853.203008, 45.80855934, 599.7475926, 128.7726825),
    5: (564.5979403, 84.68969105, 1186.442823, 115.1646095),
    6: (17055.08952, 1348.323214, 17055.62047, 30.12787638),
    7: (63.93753049, 15.98438262, 516.5345539, 59.08287156),
}


def _params(i: int) -> tuple[DdpParams, int, float]:
    noise, bits, n, n_min, c, d, z, k_std, rounds, delta = SETTINGS[i]
    params = DdpParams(
        bits=bits, cohort_size=n, min_survivors=n_min, clip_norm=c, dim=d,
        noise_multiplier=z, noise=noise, k_stddevs=k_std,
    )  # fmt: skip
    return params, rounds, delta


def _independent(i: int) -> tuple[float, float, float, float]:
    """(scale, local std, inflated l2 (integer domain), epsilon) of SETTINGS[i], by mpmath."""
    mp = mpmath.mp
    noise, bits, n, n_min, c, d, z, k_std, rounds, delta = SETTINGS[i]
    c, z, k_std, delta = (mp.mpf(x) for x in (c, z, k_std, delta))
    d_pad = 2 ** math.ceil(math.log2(d))
    half = mp.mpf(2) ** (bits - 1)

    def spread(s: mpmath.mpf) -> mpmath.mpf:
        return k_std * mp.sqrt(
            (n * c * s) ** 2 / d_pad + mp.mpf(n) / 4 + n * (z * c * s) ** 2 / n_min
        )

    lo, hi = mp.mpf(0), mp.mpf(1)
    while spread(hi) < half:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spread(mid) < half else (lo, mid)
    s = lo
    sigma = z * c / mp.sqrt(n_min)  # local std, model units
    beta = mp.exp(mp.mpf(-0.5))
    cs = c * s
    b2 = mp.sqrt(
        cs**2 + mp.mpf(d_pad) / 4 + mp.sqrt(2 * mp.log(1 / beta)) * (cs + mp.sqrt(d_pad) / 2)
    )
    l2 = min(cs + mp.sqrt(d_pad), b2) / s  # model units
    l1 = l2 * min(l2 * s, mp.sqrt(d_pad))  # = rounded_l1_norm_bound(l2 s, d') / s
    orders = [*range(2, 129), 256]
    if noise == "gaussian":
        tau = 10 * mp.fsum(
            mp.exp(-2 * (mp.pi * sigma * s) ** 2 * (mp.mpf(k) / (k + 1))) for k in range(1, n_min)
        )
        r2, r1 = l2 / (mp.sqrt(n_min) * sigma), l1 / (mp.sqrt(n_min) * sigma)

        def rdp(a: int) -> mpmath.mpf:
            return min(
                mp.mpf(a) / 2 * r2**2 + tau * d_pad,
                mp.mpf(a) / 2 * (r2**2 + 2 * r1 * tau + tau**2 * d_pad),
                mp.mpf(a) / 2 * (r2 + mp.sqrt(d_pad) * tau) ** 2,
            )
    else:
        mu = n_min * sigma**2  # central variance, model units

        def rdp(a: int) -> mpmath.mpf:
            extra = min(
                ((2 * a - 1) * s * l2**2 + 6 * l1) / (4 * s**3 * mu**2), 3 * l1 / (2 * s * mu)
            )
            return mp.mpf(a) / (2 * mu) * l2**2 + extra

    eps = min(
        rounds * rdp(a) + mp.log(1 - mp.mpf(1) / a) - mp.log(delta * a) / (a - 1) for a in orders
    )
    return float(s), float(sigma * s), float(l2 * s), float(max(eps, 0))


@pytest.mark.parametrize("i", sorted(GOLDEN))
def test_golden_vectors_are_reproduced_independently(i):
    assert _independent(i) == pytest.approx(GOLDEN[i], rel=2e-9)


@pytest.mark.parametrize("i", sorted(GOLDEN))
def test_golden_vectors(i):
    params, rounds, delta = _params(i)
    choice = choose(params)
    scale, std, l2, eps = GOLDEN[i]
    assert choice.scale == pytest.approx(scale, rel=1e-9)
    assert choice.local_noise_std == pytest.approx(std, rel=1e-9)
    assert choice.l2_sensitivity == pytest.approx(l2, rel=1e-9)
    assert ddp_epsilon(params, choice, rounds, delta) == pytest.approx(eps, rel=1e-8)


def _gaussian_epsilon(z: float, rounds: int, delta: float) -> float:
    accountant = rdp_privacy_accountant.RdpAccountant(list(ORDERS))
    accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("noise", ["gaussian", "skellam"])
def test_epsilon_approaches_the_continuous_gaussian_as_bits_grow(noise):
    z, rounds, delta = 1.0, 20, 1e-6
    central = _gaussian_epsilon(z, rounds, delta)
    ratios = []
    for bits in (12, 14, 16, 18, 20, 24):
        params = DdpParams(bits, 200, 160, 1.0, 2**18, z, noise=noise)
        ratios.append(ddp_epsilon(params, choose(params), rounds, delta) / central)
    assert all(r >= 1 - 1e-12 for r in ratios)  # never better than the continuous Gaussian
    assert ratios == sorted(ratios, reverse=True)
    assert ratios[0] > 1.1  # 12 bits: rounding inflation is visible
    assert ratios[-1] < 1.001


@pytest.mark.parametrize("noise", ["gaussian", "skellam"])
@pytest.mark.parametrize("z", [0.6, 1.0, 2.0])
def test_acceptance_20_bits_1000_clients_within_5_percent_of_central(noise, z):
    """Issue 18's criterion, at d = 2**20 and 2**16, 100 rounds, delta 1e-6."""
    for dim in (2**16, 2**20):
        params = DdpParams(20, 1000, 1000, 1.0, dim, z, noise=noise)
        central = _gaussian_epsilon(z, 100, 1e-6)
        eps = ddp_epsilon(params, choose(params), 100, 1e-6)
        assert central <= eps <= 1.05 * central, (dim, eps, central)
        assert eps <= 1.001 * central  # in fact within 0.1%


def test_tau_matches_its_sum_and_vanishes_for_large_sigma():
    sigma, n = 0.8, 7
    expected = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))
    assert ddgauss_tau(sigma, n) == pytest.approx(expected, rel=1e-14)
    assert ddgauss_tau(sigma, 1) == 0.0
    assert ddgauss_tau(10.0, 1000) == 0.0


def test_the_tau_term_counts_in_setting_2():
    params, _, _ = _params(2)
    choice = choose(params)
    assert ddgauss_tau(choice.local_noise, params.min_survivors) * params.padded_dim > 1.0


def test_skellam_rdp_accepts_only_integer_orders():
    with pytest.raises(ConfigError, match="alpha"):
        skellam_rdp(2.5, 10.0, 30.0, 100.0)


def test_rdp_per_round_has_the_reference_orders():
    params = DdpParams(16, 100, 80, 1.0, 5000, 1.0, noise="skellam")
    rdp = rdp_per_round(params, choose(params))
    assert list(rdp) == [float(a) for a in range(2, 129)] + [256.0]
    assert all(rdp[a] < rdp[b] for a, b in zip(list(rdp), list(rdp)[1:], strict=False))


def test_bits_too_few_for_the_cohort_names_bits():
    with pytest.raises(ConfigError) as err:
        choose(DdpParams(6, 10_000, 10_000, 1.0, 1000, 1.0))
    assert err.value.key == "bits"


def test_noise_that_does_not_fit_names_the_noise_multiplier():
    with pytest.raises(ConfigError) as err:
        choose(DdpParams(10, 100, 100, 1.0, 2**16, 1000.0))
    assert err.value.key == "noise_multiplier"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"noise": "laplace"}, "noise"),
        ({"bits": 1}, "bits"),
        ({"bits": 63}, "bits"),
        ({"cohort_size": 0}, "cohort_size"),
        ({"min_survivors": 101}, "min_survivors"),
        ({"min_survivors": 0}, "min_survivors"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"noise_multiplier": math.inf}, "noise_multiplier"),
        ({"dim": 0}, "dim"),
        ({"k_stddevs": -1.0}, "k_stddevs"),
        ({"beta": 1.0}, "beta"),
    ],
)
def test_params_validate_themselves(change, key):
    fields = dict(bits=16, cohort_size=100, min_survivors=80, clip_norm=1.0, dim=10,
                  noise_multiplier=1.0) | change  # fmt: skip
    with pytest.raises(ConfigError) as err:
        DdpParams(**fields)
    assert err.value.key == key


def test_padded_dim_and_unconditional_rounding_bound():
    assert [DdpParams(16, 1, 1, 1.0, d, 1.0).padded_dim for d in (1, 2, 3, 1024, 1025)] == [
        1, 2, 4, 1024, 2048,
    ]  # fmt: skip
    assert inflated_norm_bound(10.0, 16, 0.0) == 14.0


@settings(max_examples=60, deadline=None)
@given(
    noise=st.sampled_from(["gaussian", "skellam"]),
    bits=st.integers(8, 32),
    n=st.integers(1, 2000),
    survive=st.floats(0.05, 1.0),
    c=st.floats(0.01, 100.0),
    log_d=st.integers(0, 24),
    z=st.floats(0.3, 5.0),
    k_std=st.floats(1.0, 6.0),
)
def test_choice_invariants(noise, bits, n, survive, c, log_d, z, k_std):
    n_min = max(1, int(survive * n))
    params = DdpParams(bits, n, n_min, c, 2**log_d, z, noise=noise, k_stddevs=k_std)
    try:
        choice = choose(params)
    except ConfigError as err:
        assert err.key in ("bits", "noise_multiplier")
        return
    s, d_pad = choice.scale, params.padded_dim
    variance = (n * c * s) ** 2 / d_pad + n / 4 + n * choice.local_noise_std**2
    # The aggregate's k stddevs fill m / 2: the largest scale that fits.
    assert k_std * math.sqrt(variance) == pytest.approx(2.0 ** (bits - 1), rel=1e-9)
    assert n_min * choice.local_noise_std**2 == pytest.approx((z * c * s) ** 2, rel=1e-12)
    local = choice.local_noise if noise == "gaussian" else math.sqrt(choice.local_noise)
    assert local == pytest.approx(choice.local_noise_std, rel=1e-12)
    assert c * s <= choice.l2_sensitivity <= c * s + math.sqrt(d_pad)
    l1, l2 = choice.l1_sensitivity, choice.l2_sensitivity
    assert l1 <= l2**2 * (1 + 1e-12) and l1 <= math.sqrt(d_pad) * l2 * (1 + 1e-12)
    assert choice.expected_error_ratio >= 1
    assert choice.error_variance <= choice.error_variance_full_cohort * (1 + 1e-12)
    # Never better than the central Gaussian at the same orders; more rounds cost more.
    rdp = rdp_per_round(params, choice, (2, 8, 32))
    for a, value in rdp.items():
        assert value >= a / (2 * z**2) * (1 - 1e-12)
    eps1 = ddp_epsilon(params, choice, 1, 1e-6)
    assert ddp_epsilon(params, choice, 3, 1e-6) >= eps1
