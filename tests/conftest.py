"""Shared fixtures: one Ray instance per test session, wandb disabled, composed configs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import ray
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from engine.config import register_configs
from engine.experiment import Experiment, build_experiment
from engine.run import CONFIG_DIR

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session", autouse=True)
def strategy_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Optimised mechanism strategies are cached in a temporary directory, never in ~/.cache."""
    previous = os.environ.get("FEDRAY_CACHE_DIR")
    os.environ["FEDRAY_CACHE_DIR"] = str(tmp_path_factory.mktemp("strategies"))
    yield
    if previous is None:
        os.environ.pop("FEDRAY_CACHE_DIR", None)
    else:
        os.environ["FEDRAY_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Starts Ray once for the whole session and shuts it down at the end."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def compose_config(*overrides: str) -> DictConfig:
    """The config that `fedray <overrides>` would run."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def smoke_experiment(*overrides: str) -> Experiment:
    """The smoke experiment with extra overrides."""
    experiment, _ = build_experiment(compose_config("experiment=smoke", *overrides))
    return experiment
