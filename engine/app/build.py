"""From a composed Hydra config to a validated `Experiment`: building its components."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from common.errors import ConfigError, require
from common.rng import require_seed
from engine.app.audit import audited
from engine.app.fit import check_fit
from engine.app.secagg import with_secure_aggregation
from engine.plan import (
    Audit,
    Checkpointing,
    Cluster,
    Evaluation,
    Experiment,
    Privacy,
    Tracking,
    validate,
)
from engine.population import Population
from engine.scheduling import ParticipationPolicy, RoundClock
from engine.training import Faults, LocalTraining
from mechanisms.accounting import calibrated
from mechanisms.base import Mechanism
from mechanisms.participation import ParticipationBound

T = TypeVar("T")


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
    model_factory = _model_factory(cfg, population)
    audit = _section(cfg, "audit", Audit)
    population, canaries = audited(audit, population, model_factory, seed)
    participation: ParticipationPolicy = _component(cfg, "participation")
    privacy = _section(cfg, "privacy", Privacy)
    experiment = Experiment(
        name=name,
        seed=seed,
        rounds=rounds,
        population=population,
        availability=_component(cfg, "availability", num_clients=population.num_clients),
        participation=participation,
        clock=_section(cfg, "clock", RoundClock),
        devices=_component(cfg, "devices"),
        model_factory=model_factory,
        training=_section(cfg, "training", LocalTraining),
        aggregation=_component(cfg, "aggregation"),
        strategy=_component(cfg, "strategy"),
        mechanism=build_mechanism(cfg, rounds, participation.bound, privacy),
        clipping=_component(cfg, "clipping"),
        privacy=privacy,
        evaluation=_section(cfg, "eval", Evaluation),
        cluster=_section(cfg, "cluster", Cluster),
        checkpoint=_section(cfg, "checkpoint", Checkpointing),
        faults=_section(cfg, "faults", Faults),
        audit=audit,
        canaries=canaries,
    )
    auto = cfg.mechanism.get("noise_multiplier") == "auto"
    experiment = with_secure_aggregation(experiment, privacy.target_epsilon if auto else None)
    validate(experiment)
    return experiment, _section(cfg, "tracking", Tracking)


def build_mechanism(
    cfg: DictConfig, rounds: int, bound: ParticipationBound, privacy: Privacy | None = None
) -> Mechanism:
    """The config's mechanism, prepared for the run's (n, k, b), its noise solved if "auto".

    `Mechanism.prepare` optimises the factorisation here, once: the driver's accountant and the
    server's noise then use the very same C, carried with the pickled mechanism. With
    `mechanism.noise_multiplier=auto`, the noise multiplier is the smallest whose planned
    epsilon meets `privacy.target_epsilon` (`mechanisms.accounting.calibrated`).

    Raises:
        ConfigError: a noise multiplier that is neither a number nor "auto", "auto" without a
            target, or a target that no noise multiplier meets.
    """
    sigma = cfg.mechanism.get("noise_multiplier")
    auto = sigma == "auto"
    require(
        sigma is None or auto or (isinstance(sigma, int | float) and not isinstance(sigma, bool)),
        "mechanism.noise_multiplier",
        f"must be a number or 'auto', got {sigma!r}",
    )
    privacy = privacy or Privacy()
    target = privacy.target_epsilon
    require(
        not auto or target is not None,
        "mechanism.noise_multiplier",
        "auto needs privacy.target_epsilon, the epsilon to calibrate the noise to",
    )
    placeholder = {"noise_multiplier": 1.0} if auto else {}  # solved below, once prepared
    mechanism: Mechanism = _component(cfg, "mechanism", **placeholder)
    k, b = bound.resolved(rounds), bound.min_separation
    prepared = _checked("mechanism", lambda: mechanism.prepare(rounds, k, b))
    if not auto or target is None:
        return prepared
    return calibrated(prepared, rounds, bound, target, privacy.delta)
