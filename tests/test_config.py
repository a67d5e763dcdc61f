"""engine/app/config.py: structured-config schemas derived from the classes they configure."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from engine.aggregation import DenseAggregator
from engine.app.config import COMPONENTS, Config, register_configs, schema_of
from engine.plan import Cluster, Evaluation, Tracking
from engine.population import AlwaysAvailable, SyntheticPopulation
from engine.scheduling import UniformParticipation
from engine.training import MLP, LocalTraining, LogisticRegression
from mechanisms.noiseless import NoNoise
from strategies.fedavg import FedAvg

DATACLASSES: list[Callable[..., Any]] = [
    SyntheticPopulation,
    AlwaysAvailable,
    UniformParticipation,
    DenseAggregator,
    FedAvg,
    NoNoise,
    LocalTraining,
    Evaluation,
    Cluster,
    Tracking,
]


def _fields(schema: type) -> dict[str, Any]:
    assert dataclasses.is_dataclass(schema)
    return {f.name: f.default for f in dataclasses.fields(schema)}


@pytest.mark.parametrize("cls", DATACLASSES, ids=lambda c: c.__name__)
def test_schema_of_a_dataclass_has_its_fields_and_defaults(cls):
    schema = schema_of(cls)
    expected: dict[str, Any] = {}
    for f in (f for f in dataclasses.fields(cls) if f.init):
        expected[f.name] = MISSING if f.default is dataclasses.MISSING else f.default
    fields = _fields(schema)
    target = fields.pop("_target_")
    assert fields == expected
    assert get_class(target) is cls
    assert _fields(schema_of(cls, with_target=False)) == expected


def test_schema_of_a_module_uses_its_constructor():
    assert _fields(schema_of(LogisticRegression, with_target=False)) == {
        "num_features": MISSING,
        "num_classes": MISSING,
    }
    assert _fields(schema_of(MLP, with_target=False)) == {
        "num_features": MISSING,
        "num_classes": MISSING,
        "hidden": 64,
    }
    assert _fields(schema_of(MLP))["_target_"] == "engine.training.models.classifiers.MLP"
    assert get_class(_fields(schema_of(MLP))["_target_"]) is MLP


def test_schema_field_types_follow_the_annotations():
    types = {f.name: f.type for f in dataclasses.fields(schema_of(SyntheticPopulation))}
    assert types["num_clients"] is int
    assert types["alpha"] is float
    assert types["_target_"] is str
    cluster = {f.name: f.type for f in dataclasses.fields(schema_of(Cluster))}
    assert cluster["num_workers"] == int | None
    assert cluster["address"] == str | None


def test_structured_schema_instantiates_to_the_class():
    cfg = OmegaConf.structured(schema_of(SyntheticPopulation))
    cfg.num_clients = 50
    cfg.alpha = 1  # an int is accepted for a float field
    container = OmegaConf.to_container(cfg)
    assert isinstance(container, dict)
    kwargs = {str(k): v for k, v in container.items()}
    cls = get_class(kwargs.pop("_target_"))
    pop = cls(**kwargs)
    assert pop == SyntheticPopulation(num_clients=50, alpha=1.0)


@pytest.mark.parametrize(
    "cls", [SyntheticPopulation, FedAvg, Cluster, MLP], ids=lambda c: c.__name__
)
def test_structured_schema_rejects_an_unknown_key(cls):
    cfg = OmegaConf.structured(schema_of(cls))
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        cfg.no_such_key = 1
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        OmegaConf.merge(cfg, {"no_such_key": 1})


@pytest.mark.parametrize(
    ("cls", "key", "value"),
    [
        (SyntheticPopulation, "num_clients", "abc"),
        (SyntheticPopulation, "alpha", "x"),
        (UniformParticipation, "cohort_size", "many"),
        (Cluster, "num_workers", "two"),
        (MLP, "hidden", 1.5),
    ],
)
def test_structured_schema_rejects_a_wrong_type(cls, key, value):
    cfg = OmegaConf.structured(schema_of(cls))
    with pytest.raises(ValidationError):
        cfg[key] = value
    with pytest.raises(ValidationError):
        OmegaConf.merge(cfg, {key: value})


def test_numeric_strings_are_converted():
    cfg = OmegaConf.structured(schema_of(SyntheticPopulation))
    cfg.num_clients = "12"
    assert cfg.num_clients == 12


def test_top_level_config_defaults():
    cfg = OmegaConf.structured(Config)
    assert cfg.seed == 0
    assert OmegaConf.is_missing(cfg, "population")
    assert cfg.training.lr == LocalTraining().lr
    assert cfg.eval.every == Evaluation().every
    assert cfg.cluster.chunk_size is None
    assert cfg.tracking.mode == Tracking().mode
    assert "_target_" not in cfg.training
    with pytest.raises(ValidationError):
        cfg.training.epochs = "abc"


def test_register_configs_is_idempotent():
    store = ConfigStore.instance()
    register_configs()
    first = {group: sorted(store.list(f"schema/{group}")) for group, _, _ in COMPONENTS}
    base = store.load("base_config.yaml").node
    register_configs()
    second = {group: sorted(store.list(f"schema/{group}")) for group, _, _ in COMPONENTS}
    assert first == second
    assert store.load("base_config.yaml").node == base
    for group, option, cls in COMPONENTS:
        assert f"{option}.yaml" in second[group]
        node = store.load(f"schema/{group}/{option}.yaml").node
        assert get_class(node["_target_"]) is cls
