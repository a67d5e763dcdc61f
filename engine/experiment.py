"""From a composed config to validated, ready-to-run components."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from engine.aggregation import Aggregator
from engine.availability import Availability
from engine.client import LocalTraining
from engine.clock import RoundClock
from engine.devices import DeviceProfiles
from engine.errors import ConfigError, require
from engine.faults import Faults
from engine.fit import check_fit
from engine.participation import ParticipationBound, ParticipationPolicy
from engine.population import Population
from engine.rng import require_seed
from engine.settings import Checkpointing, Cluster, Evaluation, Privacy, Tracking
from engine.vectorised import supports_vectorised
from mechanisms.accounting import noise_for_epsilon, planned, resolved_participations
from mechanisms.base import Mechanism
from mechanisms.clipping import Clipping
from strategies.base import Strategy

T = TypeVar("T")


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


def _checked(key: str, build: Callable[[], T]) -> T:
    """Runs `build`, turning any validation failure into a `ConfigError` under `key`."""
    try:
        return build()
    except ConfigError as err:
        raise err.within(key) from None
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):
            raise cause.within(key) from None
        raise ConfigError(key, str(cause or err).splitlines()[0]) from None
    except (OmegaConfBaseException, TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(key, str(err).splitlines()[0]) from None


def as_dict(node: Any) -> dict[str, Any]:
    """A resolved plain-dict copy of a config node."""
    container = OmegaConf.to_container(node, resolve=True)
    assert isinstance(container, dict)
    return {str(key): value for key, value in container.items()}


def _section(cfg: DictConfig, key: str, cls: Callable[..., T]) -> T:
    return _checked(key, lambda: cls(**as_dict(cfg[key])))


def _component(cfg: DictConfig, key: str, **injected: Any) -> Any:
    return _checked(key, lambda: hydra.utils.instantiate(cfg[key], _convert_="all", **injected))


def _model_factory(cfg: DictConfig, population: Population) -> Callable[[], nn.Module]:
    shape = {"num_features": population.num_features, "num_classes": population.num_classes}
    factory: Callable[[], nn.Module] = _checked(
        "model", lambda: hydra.utils.instantiate(cfg.model, _partial_=True, **shape)
    )
    check_fit(factory, population)  # e.g. an LM on feature vectors: one line, before Ray starts
    _checked("model", factory)  # build one now, so that impossible sizes fail before Ray starts
    return factory


def build_experiment(cfg: DictConfig) -> tuple[Experiment, Tracking]:
    """Validates `cfg` and builds its components; starts nothing.

    Raises:
        ConfigError: naming the first invalid key, e.g. "rounds: must be >= 1, got -1".
    """
    name, seed, rounds = str(cfg.name), int(cfg.seed), int(cfg.rounds)  # typed by the schema
    require_seed(seed)
    require(rounds >= 1, "rounds", f"must be >= 1, got {rounds}")
    population: Population = _component(cfg, "population")
    participation: ParticipationPolicy = _component(cfg, "participation")
    experiment = Experiment(
        name=name,
        seed=seed,
        rounds=rounds,
        population=population,
        availability=_component(cfg, "availability", num_clients=population.num_clients),
        participation=participation,
        clock=_section(cfg, "clock", RoundClock),
        devices=_component(cfg, "devices"),
        model_factory=_model_factory(cfg, population),
        training=_section(cfg, "training", LocalTraining),
        aggregation=_component(cfg, "aggregation"),
        strategy=_component(cfg, "strategy"),
        mechanism=build_mechanism(cfg, rounds, participation.bound),
        clipping=_component(cfg, "clipping"),
        privacy=_section(cfg, "privacy", Privacy),
        evaluation=_section(cfg, "eval", Evaluation),
        cluster=_section(cfg, "cluster", Cluster),
        checkpoint=_section(cfg, "checkpoint", Checkpointing),
        faults=_section(cfg, "faults", Faults),
    )
    _check_consistent(experiment)
    _check_private(experiment)
    return experiment, _section(cfg, "tracking", Tracking)


def build_mechanism(cfg: DictConfig, rounds: int, bound: ParticipationBound) -> Mechanism:
    """The config's mechanism, given the run's (n, k, b) when it optimises for them."""
    inputs = _mechanism_inputs(cfg, rounds, bound)
    mechanism: Mechanism = _component(cfg, "mechanism", **inputs)
    # Optimise the strategy here, once: the driver's accountant and the server's noise then use
    # the very same C, carried with the pickled mechanism.
    k = resolved_participations(bound, rounds)
    _checked("mechanism", lambda: mechanism.sensitivity_squared(rounds, k, bound.min_separation))
    return mechanism


def _mechanism_inputs(cfg: DictConfig, rounds: int, bound: ParticipationBound) -> dict[str, int]:
    """The run's (n, k, b), for the mechanism constructors that optimise for them."""
    inputs = {
        "rounds": rounds,
        "max_participations": resolved_participations(bound, rounds),
        "min_separation": bound.min_separation,
    }
    target = _checked("mechanism", lambda: hydra.utils.get_class(cfg.mechanism._target_))
    accepted = inspect.signature(target).parameters
    return {key: value for key, value in inputs.items() if key in accepted}


def _check_private(experiment: Experiment) -> None:
    """A private mechanism needs clipping, uniform weights, and a plan within the target."""
    exp = experiment
    private = exp.mechanism.noise_multiplier > 0
    require(
        not private or exp.clipping.initial_norm is not None,
        "clipping",
        "a private mechanism needs clipping=fixed or clipping=adaptive",
    )
    weighting = getattr(exp.aggregation, "weighting", "uniform")
    require(
        exp.clipping.initial_norm is None or weighting == "uniform",
        "aggregation.weighting",
        "must be 'uniform' with clipping: an example-count weight would escape the clip norm",
    )
    if private:
        z = exp.mechanism.noise_multiplier
        _checked("clipping", lambda: exp.clipping.value_noise_multiplier(z))
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
