"""What a run is, once validated: every component of one simulation, and their joint checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from common.errors import ConfigError, require
from engine.aggregation import Aggregator
from engine.plan.audit import Audit
from engine.plan.settings import Checkpointing, Cluster, Evaluation, Privacy
from engine.population import Availability, DeviceProfiles, Population
from engine.scheduling import ParticipationPolicy, RoundClock
from engine.training import Faults, LocalTraining, supports_vectorised
from mechanisms.accounting import noise_for_epsilon, planned
from mechanisms.audit.canaries import Canaries
from mechanisms.base import Mechanism
from mechanisms.clipping import Clipping
from strategies.base import Strategy


@dataclass(frozen=True)
class Experiment:
    """Everything one simulation needs, validated.

    Attributes:
        name: Experiment name (the default wandb group).
        seed: Run seed.
        rounds: Rounds to run.
        population: Who the clients are.
        availability: Who is online when.
        participation: Who trains in each round.
        clock: Deadline, over-selection, dropouts and retries in simulated time.
        devices: Clients' compute speed and bandwidth.
        model_factory: Builds a fresh, uninitialised module.
        training: Clients' local SGD.
        aggregation: How updates are weighted and summed.
        strategy: Server update rule.
        mechanism: Privacy noise.
        clipping: Per-client clip norm schedule.
        privacy: Privacy target and delta.
        evaluation: Held-out evaluation schedule.
        cluster: Ray workers and chunking.
        checkpoint: When the run's state is saved.
        faults: Injected faults (none by default).
        audit: Empirical privacy auditing settings (none by default).
        canaries: The audit's canary clients (the population's last `num_canaries` ids);
            None without canaries.
    """

    name: str
    seed: int
    rounds: int
    population: Population
    availability: Availability
    participation: ParticipationPolicy
    clock: RoundClock
    devices: DeviceProfiles
    model_factory: Callable[[], nn.Module]
    training: LocalTraining
    aggregation: Aggregator
    strategy: Strategy
    mechanism: Mechanism
    clipping: Clipping
    privacy: Privacy
    evaluation: Evaluation
    cluster: Cluster
    checkpoint: Checkpointing = field(default_factory=Checkpointing)
    faults: Faults = field(default_factory=Faults)
    audit: Audit = field(default_factory=Audit)
    canaries: Canaries | None = None


def validate(experiment: Experiment) -> None:
    """Checks that the components fit together; the first violation raises.

    Raises:
        ConfigError: naming the key to change, e.g. "participation.cohort_size: 500 is larger
            than population.num_clients=100".
    """
    _check_consistent(experiment)
    _check_private(experiment)


def _check_private(experiment: Experiment) -> None:
    """A private mechanism needs clipping, uniform weights, and a plan within the target."""
    exp = experiment
    private = exp.mechanism.noise_multiplier > 0
    require(
        not private or exp.clipping.initial_norm is not None,
        "clipping",
        "a private mechanism needs clipping=fixed or clipping=adaptive",
    )
    require(
        exp.canaries is None or exp.clipping.initial_norm is not None,
        "audit.num_canaries",
        "canaries need clipping=fixed or clipping=adaptive: a canary's update has the clip norm",
    )
    weighting = getattr(exp.aggregation, "weighting", "uniform")
    require(
        exp.clipping.initial_norm is None or weighting == "uniform",
        "aggregation.weighting",
        "must be 'uniform' with clipping: an example-count weight would escape the clip norm",
    )
    if private:
        z = exp.mechanism.noise_multiplier
        try:
            exp.clipping.value_noise_multiplier(z)
        except ConfigError as err:
            raise err.within("clipping") from None
        except ValueError as err:
            raise ConfigError("clipping", str(err).splitlines()[0]) from None
    target = exp.privacy.target_epsilon
    require(
        private or target is None,
        "privacy.target_epsilon",
        f"{target} is set, but mechanism={type(exp.mechanism).__name__} adds no noise",
    )
    if not private or target is None:
        return
    cost = planned(exp.mechanism, exp.rounds, exp.participation.bound, exp.privacy.delta)
    if cost.epsilon > target:
        needed = noise_for_epsilon(cost.sensitivity_squared, target, exp.privacy.delta)
        raise ConfigError(
            "mechanism.noise_multiplier",
            f"planned epsilon {cost.epsilon:.4g} (delta {cost.delta:g}, "
            f"k={cost.max_participations}, b={cost.min_separation}, {exp.rounds} rounds) exceeds "
            f"privacy.target_epsilon={target:g}; noise_multiplier >= {_round_up(needed)} would "
            "meet it",
        )


def _check_consistent(experiment: Experiment) -> None:
    num_clients = experiment.population.num_clients
    cohort = experiment.participation.cohort_size
    require(
        cohort <= num_clients,
        "participation.cohort_size",
        f"{cohort} is larger than population.num_clients={num_clients}",
    )
    k = experiment.participation.bound.max_participations
    needed = experiment.rounds * experiment.clock.min_reports(cohort)
    require(
        k is None or needed <= k * num_clients,
        "participation.max_participations",
        f"{experiment.rounds} rounds need at least {needed} contributions, but "
        f"{num_clients} clients x {k} participations allow only {k * num_clients if k else 0}",
    )
    largest = experiment.participation.max_cohort(num_clients)
    require(
        cohort <= largest,
        "participation.cohort_size",
        f"{cohort} is larger than the {largest} clients a round may choose from",
    )
    if experiment.training.vectorise == "on":
        model = experiment.model_factory()
        require(
            supports_vectorised(model),
            "training.vectorise",
            f"'on' needs a model without per-client hooks; {type(model).__name__} has them "
            "(use auto or off)",
        )


def _round_up(value: float, digits: int = 4) -> float:
    """`value` rounded up to `digits` significant digits (a suggestion that still holds)."""
    step = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return round(math.ceil(value / step) * step, 12)
