"""Renyi DP of the distributed discrete Gaussian and Skellam mechanisms, and their epsilon.

One round releases, in the integer domain, the sum of the survivors' rounded updates plus their
noise shares. A client's contribution is one rounded vector of L2 norm <= Delta_2 (the inflated
bound that conditional rounding enforces) and L1 norm <= Delta_1. The accounting uses n_min
shares: the shares of any further survivors are independent of the client's data, so adding
them is post-processing and cannot weaken the bound.

Orders: Kairouz, Liu, Steinke 2021 prove their bound for every real alpha > 1; Agarwal,
Kairouz, Liu 2021 state theirs for integer alpha > 1. Both are evaluated on `ORDERS`, the
integers 2..128 and 256 (Google's reference grid), where both theorems hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from common.errors import require
from mechanisms.ddp.params import DdpChoice, DdpParams

ORDERS: tuple[float, ...] = (*(float(a) for a in range(2, 129)), 256.0)


def ddgauss_tau(local_sigma: float, shares: int) -> float:
    """The DDGauss tau = 10 sum_{k=1}^{n-1} exp(-2 pi**2 sigma**2 k / (k + 1)), n = shares.

    Guarantees:
        Kairouz, Liu, Steinke 2021, Theorem 1: the sum of n independent N_Z(0, sigma**2) is
        close to N_Z(0, n sigma**2), with the closeness measured by tau (sigma in the integer
        domain). Summed exactly (math.fsum), one term per share: O(n).
    """
    require(shares >= 1, "min_survivors", f"must be >= 1, got {shares}")
    a = 2 * math.pi**2 * local_sigma**2
    return 10 * math.fsum(math.exp(-a * k / (k + 1)) for k in range(1, shares))


def ddgauss_rdp(
    alpha: float, l2: float, l1: float, local_sigma: float, shares: int, padded_dim: int
) -> float:
    """RDP at order alpha of one release of the distributed discrete Gaussian.

    With sigma_c = sqrt(n) sigma (n = shares) and tau from `ddgauss_tau`:
    eps(alpha) = min(alpha/2 (D2/sigma_c)**2 + tau d',
                     alpha/2 ((D2/sigma_c)**2 + 2 tau D1/sigma_c + tau**2 d'),
                     alpha/2 (D2/sigma_c + tau sqrt(d'))**2).

    Guarantees:
        Kairouz, Liu, Steinke 2021, Prop. 14 (Eq. 17 of arXiv:2102.06387), for all real
        alpha > 1, add/remove (or replace-with-zero) adjacency of one client whose integer
        vector has ||x||_2 <= l2 and ||x||_1 <= l1, each of the n clients adding independent
        N_Z(0, local_sigma**2) noise to every one of the padded_dim coordinates.
    """
    require(alpha > 1, "alpha", f"must be > 1, got {alpha}")
    tau = ddgauss_tau(local_sigma, shares)
    central = math.sqrt(shares) * local_sigma
    r2, r1 = l2 / central, l1 / central
    return min(
        alpha / 2 * r2**2 + tau * padded_dim,
        alpha / 2 * (r2**2 + 2 * r1 * tau + tau**2 * padded_dim),
        alpha / 2 * (r2 + tau * math.sqrt(padded_dim)) ** 2,
    )


def skellam_rdp(alpha: float, l2: float, l1: float, variance: float) -> float:
    """RDP at order alpha of one release of the (summed) Skellam mechanism.

    With mu the aggregate noise variance (Sk(mu/2, mu/2) per coordinate):
    eps(alpha) = alpha D2**2 / (2 mu) + min(((2 alpha - 1) D2**2 + 6 D1) / (4 mu**2),
                                            3 D1 / (2 mu)).

    Guarantees:
        Agarwal, Kairouz, Liu 2021, Theorem 3.5 (the multi-dimensional Skellam mechanism), for
        integer alpha > 1, add/remove adjacency of one integer vector with ||x||_2 <= l2 and
        ||x||_1 <= l1. A sum of independent Skellam shares is Skellam with the summed
        variance, so n_min shares of variance mu / n_min give this mechanism exactly.
    """
    require(alpha > 1 and float(alpha).is_integer(), "alpha", f"must be an integer > 1: {alpha}")
    first = alpha * l2**2 / (2 * variance)
    return first + min(
        ((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance)
    )


def rdp_per_round(
    params: DdpParams, choice: DdpChoice, orders: Iterable[float] = ORDERS
) -> dict[float, float]:
    """RDP of one round's release, by order, for the mechanism of `params.noise`.

    Guarantees:
        Each value is an RDP bound of one release against a client (add/remove, or replace
        with zero) whose clipped update has norm <= params.clip_norm, provided the encoder
        rotates, scales by choice.scale, rounds conditionally to norm <= choice.l2_sensitivity
        and each of >= params.min_survivors survivors adds its own independent share of
        choice.local_noise. DDGauss: Kairouz, Liu, Steinke 2021, Prop. 14 with Theorem 1's tau;
        Skellam: Agarwal, Kairouz, Liu 2021, Theorem 3.5. Only orders where the theorem holds
        are accepted: integers > 1 (all of `ORDERS`); DDGauss also takes real orders > 1.
    """
    n_min, d_pad = params.min_survivors, params.padded_dim
    l2, l1 = choice.l2_sensitivity, choice.l1_sensitivity
    if params.noise == "gaussian":
        return {float(a): ddgauss_rdp(a, l2, l1, choice.local_noise, n_min, d_pad) for a in orders}
    variance = n_min * choice.local_noise
    return {float(a): skellam_rdp(a, l2, l1, variance) for a in orders}


def epsilon_from_rdp(rdp: dict[float, float], delta: float) -> float:
    """epsilon(delta) from RDP values by order, with dp_accounting's conversion.

    Guarantees:
        (epsilon, delta)-DP by the conversion of Canonne, Kamath, Steinke 2020 / Asoodeh et al.
        2020 (dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon), minimised over the
        given orders; valid whenever each value is an RDP bound at its order.
    """
    require(0 < delta < 1, "delta", f"must be in (0, 1), got {delta}")
    from dp_accounting.rdp import rdp_privacy_accountant  # scipy: imported when used

    orders = list(rdp)
    eps, _ = rdp_privacy_accountant.compute_epsilon(orders, [rdp[a] for a in orders], delta)
    return float(eps)


def ddp_epsilon(
    params: DdpParams,
    choice: DdpChoice,
    rounds_k: int,
    delta: float,
    orders: Iterable[float] = ORDERS,
) -> float:
    """epsilon(delta) of a client who participates in at most rounds_k released rounds.

    Guarantees:
        Every round draws fresh, independent noise shares (and rounding), so RDP composes
        additively (Mironov 2017, Prop. 1, adaptive composition): rounds_k * rdp_per_round at
        each order, then converted as in `epsilon_from_rdp`. Holds under the assumptions of
        `rdp_per_round` in every round, and for any rounds of the run, since a client's
        non-participating rounds do not depend on its data (user-level, at most rounds_k
        participations; no amplification by sampling is claimed).
    """
    require(rounds_k >= 1, "max_participations", f"must be >= 1, got {rounds_k}")
    one = rdp_per_round(params, choice, orders)
    return epsilon_from_rdp({a: rounds_k * r for a, r in one.items()}, delta)
