"""Shared fixtures: one Ray instance per test session, wandb disabled, composed configs."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from engine.app.build import as_dict, build_experiment
from engine.app.config import register_configs
from engine.app.run import CONFIG_DIR, checkpoint_to_resume
from engine.app.runner import run_experiment
from engine.plan import Experiment
from engine.runtime import Backend

os.environ.setdefault("WANDB_MODE", "disabled")

# Fixtures whose tests start Ray actors: seconds each.
_RAY_FIXTURES = {"ray_session", "session_ray_address", "join_session_ray"}


def _is_slow(item: pytest.Item) -> bool:
    """Whether a test starts processes or Ray actors (marked `slow`, or on the session's Ray)."""
    fixtures = set(getattr(item, "fixturenames", ()))
    return item.get_closest_marker("slow") is not None or bool(fixtures & _RAY_FIXTURES)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs the modules that hold a slow test first, then the others, most tests first.

    Each module's tests stay together. Under pytest-xdist (`--dist loadfile
    --no-loadscope-reorder`) the slow modules then start first, spread over the workers, and
    the quick ones fill in around them, the small ones last.
    """
    slow = {item.path for item in items if _is_slow(item)}
    counts = Counter(item.path for item in items)

    def rank(item: pytest.Item) -> tuple[int, int]:
        return (0, 0) if item.path in slow else (1, -counts[item.path])

    items.sort(key=rank)  # stable: each module's tests stay in order


@pytest.fixture(scope="session", autouse=True)
def factorisation_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Optimised noise factorisations are cached in a temporary directory, never in ~/.cache."""
    previous = os.environ.get("FEDRAY_CACHE_DIR")
    os.environ["FEDRAY_CACHE_DIR"] = str(tmp_path_factory.mktemp("factorisations"))
    yield
    if previous is None:
        os.environ.pop("FEDRAY_CACHE_DIR", None)
    else:
        os.environ["FEDRAY_CACHE_DIR"] = previous


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread for the test (tiny recurrent steps: threads only contend,
    as in the workers, which use one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Starts Ray once for the whole session and shuts it down at the end."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def session_ray_address(ray_session: None) -> str:
    """The address of the session's Ray: a subprocess that joins it starts no Ray of its own.

    (Starting one takes seconds.)
    """
    return str(ray.get_runtime_context().gcs_address)


@pytest.fixture(scope="session")
def join_session_ray(session_ray_address: str) -> tuple[str, ...]:
    """The overrides by which a `fedray` subprocess joins the session's Ray, as a cluster's."""
    return ("cluster=ray", f"cluster.address='{session_ray_address}'")


def compose_config(*overrides: str) -> DictConfig:
    """The config that `fedray <overrides>` would run."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def smoke_experiment(*overrides: str) -> Experiment:
    """The smoke experiment with extra overrides."""
    experiment, _ = build_experiment(compose_config("experiment=smoke", *overrides))
    return experiment


def run_composed(
    out: Path,
    *overrides: str,
    backend: Backend | None = None,
    resume: bool = False,
    config_sha256: str = "sha",
) -> dict[str, Any]:
    """Runs `fedray <overrides>` in this process, writing to `out`; returns its summary.

    Args:
        out: The run's output directory.
        overrides: Its command-line overrides.
        backend: Where its actors live; None: Ray (the session's, when it is initialised).
        resume: Continue from the checkpoint in `out`.
        config_sha256: The config hash to record.
    """
    cfg = compose_config(*overrides)
    experiment, tracking = build_experiment(cfg)
    config = as_dict(cfg)
    checkpoint = checkpoint_to_resume(str(out), config) if resume else None
    path = run_experiment(
        experiment, tracking, out, config, config_sha256, resume=checkpoint, backend=backend
    )
    summary: dict[str, Any] = json.loads(path.read_text())
    return summary


def metrics_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl, in order."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
