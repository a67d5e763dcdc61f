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

from engine.aggregation import DenseAggregator
from engine.availability import AlwaysAvailable
from engine.client import LocalTraining
from engine.models import MLP, LogisticRegression
from engine.participation import UniformParticipation
from engine.population import SyntheticPopulation
from engine.settings import Cluster, Evaluation, Tracking
from mechanisms.noiseless import NoNoise
from strategies.fedavg import FedAvg

# Pluggable components: (config group, option, class named by the option's `_target_`).
COMPONENTS: tuple[tuple[str, str, Callable[..., Any]], ...] = (
    ("population", "synthetic", SyntheticPopulation),
    ("availability", "always", AlwaysAvailable),
    ("participation", "uniform", UniformParticipation),
    ("model", "logreg", LogisticRegression),
    ("model", "mlp", MLP),
    ("aggregation", "dense", DenseAggregator),
    ("strategy", "fedavg", FedAvg),
    ("mechanism", "none", NoNoise),
)


def schema_of(cls: Callable[..., Any], with_target: bool = True) -> type:
    """A mutable structured-config dataclass with the fields of `cls`'s constructor.

    Args:
        cls: A class whose constructor takes only config-typed keyword arguments.
        with_target: Add a `_target_` field naming `cls`, for `hydra.utils.instantiate`.
    """
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple[str, Any, Any]] = []
    if with_target:
        target = f"{cls.__module__}.{cls.__qualname__}"
        fields.append(("_target_", str, dataclasses.field(default=target)))
    for name, param in inspect.signature(cls).parameters.items():
        default = MISSING if param.default is inspect.Parameter.empty else param.default
        fields.append((name, hints.get(name, Any), dataclasses.field(default=default)))
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
    model: Any = MISSING
    aggregation: Any = MISSING
    strategy: Any = MISSING
    mechanism: Any = MISSING
    training: Any = dataclasses.field(default_factory=schema_of(LocalTraining, with_target=False))
    eval: Any = dataclasses.field(default_factory=schema_of(Evaluation, with_target=False))
    cluster: Any = dataclasses.field(default_factory=schema_of(Cluster, with_target=False))
    tracking: Any = dataclasses.field(default_factory=schema_of(Tracking, with_target=False))


def register_configs() -> None:
    """Stores the top-level schema and one schema per component option (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, option, cls in COMPONENTS:
        store.store(group=f"schema/{group}", name=option, node=schema_of(cls))
