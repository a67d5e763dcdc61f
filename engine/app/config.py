"""Structured-config schemas, registered in Hydra's ConfigStore.

Schemas are derived from the classes they configure (their constructor signatures), so a field
is declared once. Composing a config validates key names and types against them: a misspelt key
or a wrong type fails at compose time, before anything runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from engine.aggregation import DenseAggregator, MoEAggregator, SparseAggregator
from engine.plan import Audit, Checkpointing, Cluster, Evaluation, Privacy, Tracking
from engine.population import (
    AlwaysAvailable,
    DigitsDirichlet,
    DiurnalAvailability,
    FedScaleAvailability,
    FedScaleDevices,
    FemnistLikePopulation,
    H5Population,
    IntervalTraceAvailability,
    LeafPopulation,
    LognormalDevices,
    MarkovAvailability,
    RatingsPopulation,
    ShakespearePopulation,
    SyntheticPopulation,
    ZipfTextPopulation,
)
from engine.scheduling import CyclicParticipation, RoundClock, UniformParticipation
from engine.training import (
    CNN,
    MLP,
    Faults,
    LocalTraining,
    LogisticRegression,
    MoETransformerLM,
    NextWordLM,
    ReconstructionMF,
)
from mechanisms.banded import BandedMechanism
from mechanisms.blt import BltMechanism
from mechanisms.clipping import AdaptiveClipping, FixedClipping, NoClipping
from mechanisms.ddp.mechanism import DDGaussMechanism, SkellamMechanism
from mechanisms.gaussian import GaussianMechanism
from mechanisms.noiseless import NoNoise
from mechanisms.tree import TreeMechanism
from strategies import DPFTRLM, FedAdam, FedAvg, FedAvgM, FedYogi

# Pluggable components: (config group, option, class named by the option's `_target_`).
COMPONENTS: tuple[tuple[str, str, Callable[..., Any]], ...] = (
    ("population", "synthetic", SyntheticPopulation),
    ("population", "digits_dirichlet", DigitsDirichlet),
    ("population", "leaf", LeafPopulation),
    ("population", "tff_h5", H5Population),
    ("population", "zipf_text", ZipfTextPopulation),
    ("population", "shakespeare", ShakespearePopulation),
    ("population", "ratings", RatingsPopulation),
    ("population", "femnist", FemnistLikePopulation),
    ("availability", "always", AlwaysAvailable),
    ("availability", "diurnal", DiurnalAvailability),
    ("availability", "markov", MarkovAvailability),
    ("availability", "trace", IntervalTraceAvailability),
    ("availability", "fedscale", FedScaleAvailability),
    ("participation", "uniform", UniformParticipation),
    ("participation", "min_separation", UniformParticipation),
    ("participation", "max_participations", UniformParticipation),
    ("participation", "hourly", UniformParticipation),
    ("participation", "cyclic", CyclicParticipation),
    ("devices", "lognormal", LognormalDevices),
    ("devices", "fedscale", FedScaleDevices),
    ("model", "logreg", LogisticRegression),
    ("model", "mlp", MLP),
    ("model", "cnn", CNN),
    ("model", "lm", NextWordLM),
    ("model", "moe_lm", MoETransformerLM),
    ("model", "mf_recon", ReconstructionMF),
    ("aggregation", "dense", DenseAggregator),
    ("aggregation", "sparse", SparseAggregator),
    ("aggregation", "moe", MoEAggregator),
    ("strategy", "fedavg", FedAvg),
    ("strategy", "fedavgm", FedAvgM),
    ("strategy", "fedadam", FedAdam),
    ("strategy", "fedyogi", FedYogi),
    ("strategy", "dpftrl", DPFTRLM),
    ("mechanism", "none", NoNoise),
    ("mechanism", "gaussian", GaussianMechanism),
    ("mechanism", "tree", TreeMechanism),
    ("mechanism", "banded_mf", BandedMechanism),
    ("mechanism", "blt", BltMechanism),
    ("mechanism", "ddp_gaussian", DDGaussMechanism),
    ("mechanism", "ddp_skellam", SkellamMechanism),
    ("clipping", "none", NoClipping),
    ("clipping", "fixed", FixedClipping),
    ("clipping", "adaptive", AdaptiveClipping),
)

# Constructor arguments that the build supplies (from the population, or a mechanism's
# factorisation from `prepare`), so no config sets them.
INJECTED: dict[str, tuple[str, ...]] = {
    "availability": ("num_clients",),
    "model": ("num_features", "num_classes"),
    "mechanism": ("factorisation", "params", "choice"),
}

# Constructor arguments that a config may also set to "auto": the build solves for them.
CALIBRATED: dict[str, tuple[str, ...]] = {"mechanism": ("noise_multiplier",)}


def schema_of(
    cls: Callable[..., Any],
    with_target: bool = True,
    injected: tuple[str, ...] = (),
    calibrated: tuple[str, ...] = (),
) -> type:
    """A mutable structured-config dataclass with the fields of `cls`'s constructor.

    Args:
        cls: A class whose constructor takes only config-typed keyword arguments.
        with_target: Add a `_target_` field naming `cls`, for `hydra.utils.instantiate`.
        injected: Constructor arguments left out of the schema: the build supplies them.
        calibrated: Constructor arguments typed `Any` (a number, or "auto" for the build to
            solve); the build checks them.
    """
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple[str, Any, Any]] = []
    if with_target:
        target = f"{cls.__module__}.{cls.__qualname__}"
        fields.append(("_target_", str, dataclasses.field(default=target)))
    for name, param in inspect.signature(cls).parameters.items():
        if name in injected:
            continue
        default = MISSING if param.default is inspect.Parameter.empty else param.default
        kind = Any if name in calibrated else hints.get(name, Any)
        fields.append((name, kind, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


@dataclasses.dataclass
class Config:
    """The top-level schema. Component groups are typed by the option chosen (see COMPONENTS)."""

    name: str = "default"
    seed: int = 0
    rounds: int = 100
    population: Any = MISSING
    availability: Any = MISSING
    participation: Any = MISSING
    devices: Any = MISSING
    model: Any = MISSING
    aggregation: Any = MISSING
    strategy: Any = MISSING
    mechanism: Any = MISSING
    clipping: Any = MISSING
    training: Any = dataclasses.field(default_factory=schema_of(LocalTraining, with_target=False))
    clock: Any = dataclasses.field(default_factory=schema_of(RoundClock, with_target=False))
    eval: Any = dataclasses.field(default_factory=schema_of(Evaluation, with_target=False))
    cluster: Any = dataclasses.field(default_factory=schema_of(Cluster, with_target=False))
    tracking: Any = dataclasses.field(default_factory=schema_of(Tracking, with_target=False))
    privacy: Any = dataclasses.field(default_factory=schema_of(Privacy, with_target=False))
    checkpoint: Any = dataclasses.field(default_factory=schema_of(Checkpointing, with_target=False))
    faults: Any = dataclasses.field(default_factory=schema_of(Faults, with_target=False))
    audit: Any = dataclasses.field(default_factory=schema_of(Audit, with_target=False))
    resume: str | None = None


def register_configs() -> None:
    """Stores the top-level schema and one schema per component option (idempotent).

    Hydra's store is one per process: once it holds the schemas, this returns at once.
    """
    store = ConfigStore.instance()
    if "base_config.yaml" in store.repo:
        return
    store.store(name="base_config", node=Config)
    for group, option, cls in COMPONENTS:
        node = schema_of(
            cls, injected=INJECTED.get(group, ()), calibrated=CALIBRATED.get(group, ())
        )
        store.store(group=f"schema/{group}", name=option, node=node)
