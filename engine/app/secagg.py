"""A run with distributed DP: its mechanism configured for the run and SecAgg as its aggregation.

A distributed mechanism (`mechanism=ddp_gaussian|ddp_skellam`) needs the model's dimension, the
cohort, the fewest survivors a round may release with (the clock's `min_reports`) and the clip
norm to choose its scale and noise shares; and it combines only with what keeps its guarantee.
"""

from __future__ import annotations

import dataclasses
import math

from common.errors import ConfigError, require
from engine.aggregation import DenseAggregator, SecureAggregator
from engine.plan import Experiment
from mechanisms.accounting import planned
from mechanisms.clipping import FixedClipping
from mechanisms.ddp.mechanism import DistributedMechanism
from strategies import DPFTRLM


def with_secure_aggregation(
    experiment: Experiment, target_epsilon: float | None = None
) -> Experiment:
    """`experiment` as it runs with distributed DP (unchanged for a central mechanism).

    With `target_epsilon` (`mechanism.noise_multiplier=auto`), the noise multiplier is the
    smallest (to 0.05%) whose distributed epsilon meets it: never below the central Gaussian's,
    which the distributed mechanisms only approach as the bits grow.

    Raises:
        ConfigError: a combination that breaks the guarantee, in one line that says why: a
            correlated-noise strategy (DP-FTRL needs a trusted noise source), sparse or
            per-expert aggregation (it reveals which rows a client touched), adaptive or no
            clipping; or bits too few for the cohort, or a noise share that does not fit.
    """
    mechanism = experiment.mechanism
    if not isinstance(mechanism, DistributedMechanism):
        return experiment
    _check_combination(experiment)
    clipping = experiment.clipping
    assert isinstance(clipping, FixedClipping)  # checked above
    cohort = experiment.participation.cohort_size
    dim = sum(p.numel() for p in experiment.model_factory().parameters())
    run = (dim, cohort, experiment.clock.min_reports(cohort), clipping.clip_norm)
    try:
        configured = mechanism.configured(*run)
        if target_epsilon is not None:
            configured = _calibrated(configured, run, experiment, target_epsilon)
    except ConfigError as err:
        raise err.within("mechanism") from None
    aggregation = SecureAggregator(codec=configured.codec, seed=experiment.seed)
    return dataclasses.replace(experiment, mechanism=configured, aggregation=aggregation)


def _calibrated(
    mechanism: DistributedMechanism,
    run: tuple[int, int, int, float],
    experiment: Experiment,
    target: float,
) -> DistributedMechanism:
    """The smallest noise multiplier >= `mechanism`'s whose planned epsilon meets `target`."""
    bound, rounds, delta = (
        experiment.participation.bound,
        experiment.rounds,
        experiment.privacy.delta,
    )

    def with_z(z: float) -> DistributedMechanism:
        return dataclasses.replace(mechanism, noise_multiplier=z).configured(*run)

    def meets(candidate: DistributedMechanism) -> bool:
        return planned(candidate, rounds, bound, delta).epsilon <= target

    low, high = mechanism, mechanism
    while not meets(high):
        low, high = high, with_z(2.0 * high.noise_multiplier)
    while high.noise_multiplier > 1.0005 * low.noise_multiplier:
        middle = with_z(math.sqrt(low.noise_multiplier * high.noise_multiplier))
        low, high = (low, middle) if meets(middle) else (middle, high)
    return high


def _check_combination(experiment: Experiment) -> None:
    name = type(experiment.mechanism).__name__
    require(
        type(experiment.aggregation) is DenseAggregator,
        "aggregation",
        f"{name} needs aggregation=dense: sparse and per-expert sums reveal which rows or "
        "experts a client touched, which secure aggregation would hide",
    )
    require(
        not isinstance(experiment.strategy, DPFTRLM),
        "strategy",
        f"{name} adds independent noise on the clients; DP-FTRL's correlated noise needs a "
        "trusted noise source (use fedavg, fedavgm, fedadam or fedyogi)",
    )
    require(
        isinstance(experiment.clipping, FixedClipping),
        "clipping",
        f"{name} needs clipping=fixed: adaptive clipping's bit count would be released outside "
        "secure aggregation, without its own discrete noise",
    )
