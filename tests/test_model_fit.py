"""engine/app/fit.py: every shipped model x population pair either trains, or fails in one line.

The pairs come from the yaml files of conf/model and conf/population. A pair that builds must
also train: one client's local SGD and an evaluation with the real model and data, as a worker
runs them, which shows the `inputs` declarations are true, not merely consistent.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import ray
import torch
from omegaconf import OmegaConf

import engine.app.run
from common.errors import ConfigError
from engine.app.build import build_experiment
from engine.app.config import COMPONENTS
from engine.app.run import CONFIG_DIR, check_command_line
from engine.plan import Experiment
from engine.training import evaluate, flatten, init_parameters, train_client
from tests.conftest import compose_config

MODELS = sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))
POPULATIONS = sorted(path.stem for path in (CONFIG_DIR / "population").glob("*.yaml"))
PAIRS = [(m, p) for m in MODELS for p in POPULATIONS]
NUM_USERS = 12  # per data file: enough training clients for a cohort


def _leaf(directory: Path, side: int = 28) -> str:
    """A LEAF file of NUM_USERS users with three side x side images each (labels 0..3)."""
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(NUM_USERS)]
    data = {
        u: {"x": rng.random((3, side * side)).tolist(), "y": [0, 1, i % 4]}
        for i, u in enumerate(users)
    }
    path = directory / f"leaf_{side}.json"
    path.write_text(json.dumps({"users": users, "num_samples": [3] * NUM_USERS, "user_data": data}))
    return str(path)


def _tff_h5(directory: Path) -> str:
    """A TFF HDF5 file of NUM_USERS writers with three 28 x 28 images each."""
    rng = np.random.default_rng(1)
    path = directory / "clients.h5"
    with h5py.File(path, "w") as handle:
        for i in range(NUM_USERS):
            pixels = rng.random((3, 28, 28)).astype(np.float32)
            handle.create_dataset(f"examples/w{i:02d}/pixels", data=pixels)
            handle.create_dataset(f"examples/w{i:02d}/label", data=np.array([0, 1, i % 4], "i4"))
    return str(path)


def _shakespeare(directory: Path) -> str:
    """A LEAF Shakespeare file of NUM_USERS roles with two 8-character windows each."""
    text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind"
    users = [f"ROLE{i}" for i in range(NUM_USERS)]
    data = {
        u: {"x": [text[i : i + 8], text[i + 1 : i + 9]], "y": [text[i + 8], text[i + 9]]}
        for i, u in enumerate(users)
    }
    path = directory / "shakespeare.json"
    path.write_text(json.dumps({"users": users, "num_samples": [2] * NUM_USERS, "user_data": data}))
    return str(path)


# Populations whose yaml leaves `path` to the user, and the small file each is given here.
DATA_FILES: dict[str, Callable[[Path], str]] = {
    "leaf": _leaf,
    "tff_h5": _tff_h5,
    "shakespeare": _shakespeare,
}


def _needs_a_file(population: str) -> bool:
    return OmegaConf.is_missing(
        OmegaConf.load(CONFIG_DIR / "population" / f"{population}.yaml"), "path"
    )


@pytest.fixture(scope="module")
def build(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str, str], Experiment | ConfigError]:
    """`build(model, population)`: the pair's experiment once it trained, or its ConfigError.

    Cached: each pair is built (and trained) once, whichever test asks first.
    """
    directory = tmp_path_factory.mktemp("data")
    files = {option: write(directory) for option, write in DATA_FILES.items()}
    outcomes: dict[tuple[str, str], Experiment | ConfigError] = {}

    def outcome(model: str, population: str) -> Experiment | ConfigError:
        if (model, population) not in outcomes:
            outcomes[model, population] = _build(model, population, files.get(population))
        return outcomes[model, population]

    return outcome


def _trains(experiment: Experiment) -> None:
    """One client's local training and evaluation, as a worker and the server run them."""
    population = experiment.population
    model = experiment.model_factory()
    init_parameters(model, seed=0)
    params = torch.from_numpy(flatten(model))
    data = population.client_data(0)
    update = train_client(model, params, data, experiment.training, np.random.default_rng(0))
    assert update.delta.shape == params.shape
    assert np.all(np.isfinite(update.delta)) and np.any(update.delta != 0)
    assert math.isfinite(update.loss_sum)
    stats = evaluate(model, params, data, population.num_classes)
    assert math.isfinite(stats.loss_sum) and stats.count > 0


def _overrides(population: str, path: str | None) -> list[str]:
    """The smoke experiment's overrides, or for a file population the ones that apply to it.

    experiment=smoke sets population.num_clients, which a file population does not have (its
    file decides), so it cannot compose with one: such a pair gets smoke's other settings.
    """
    if path is None:
        return ["experiment=smoke", f"population={population}"]
    return [
        "rounds=3",
        "tracking.mode=disabled",
        f"population={population}",
        f"population.path={path}",
    ]


def _build(model: str, population: str, path: str | None) -> Experiment | ConfigError:
    cfg = compose_config(
        *_overrides(population, path), f"model={model}", "participation.cohort_size=2"
    )
    try:
        experiment = build_experiment(cfg)[0]
    except ConfigError as err:
        return err
    _trains(experiment)  # a pair that builds must train
    return experiment


def test_every_population_that_needs_a_file_gets_one_here():
    assert {p for p in POPULATIONS if _needs_a_file(p)} == set(DATA_FILES)


@pytest.mark.parametrize("group", ["model", "population"])
def test_every_shipped_model_and_population_declares_its_inputs(group):
    classes = [cls for g, _, cls in COMPONENTS if g == group]
    assert len(classes) == len(MODELS if group == "model" else POPULATIONS)
    assert all(getattr(cls, "inputs", None) is not None for cls in classes)


@pytest.mark.parametrize(("model", "population"), PAIRS, ids=[f"{m}-{p}" for m, p in PAIRS])
def test_a_pair_trains_or_fails_in_one_line_naming_populations_that_fit(build, model, population):
    outcome = build(model, population)
    if isinstance(outcome, Experiment):
        return  # and it trained
    message = str(outcome)
    assert outcome.key == "model" and "\n" not in message
    assert message.startswith(f"model: {model} needs ")
    needs, _, gives = message.partition(f"; population={population} gives ")
    assert gives
    named = [p for p in POPULATIONS if re.search(rf"\b{p}\b", needs)]
    assert any(isinstance(build(model, p), Experiment) for p in named), message


@pytest.mark.parametrize("model", MODELS)
def test_every_model_fits_a_shipped_population(build, model):
    assert any(isinstance(build(model, p), Experiment) for p in POPULATIONS)


def test_lm_on_the_default_population_names_the_text_populations(build):
    assert str(build("lm", "synthetic")) == (
        "model: lm needs token sequences (population=zipf_text or shakespeare); "
        "population=synthetic gives feature vectors"
    )


def test_cnn_needs_784_features_even_from_a_file_population(tmp_path):
    cfg = compose_config(
        *_overrides("leaf", _leaf(tmp_path, side=5)), "model=cnn", "participation.cohort_size=2"
    )
    with pytest.raises(ConfigError) as info:
        build_experiment(cfg)
    assert str(info.value) == (
        "model: cnn needs feature vectors of length 784 (population=femnist, or synthetic, leaf "
        "or tff_h5 with 784 features); population=leaf gives feature vectors of length 25"
    )


def test_synthetic_with_784_features_fits_the_cnn():
    experiment, _ = build_experiment(
        compose_config("experiment=smoke", "model=cnn", "population.num_features=784")
    )
    _trains(experiment)


def _no_start(*args: object, **kwargs: object) -> None:
    raise AssertionError("started")


def test_the_command_fails_in_one_line_before_anything_starts(monkeypatch):
    monkeypatch.setattr(ray, "init", _no_start)
    monkeypatch.setattr(engine.app.run, "_app", _no_start)
    with pytest.raises(ConfigError, match=r"^model: lm needs token sequences"):
        check_command_line(["model=lm"])
    monkeypatch.setattr("sys.argv", ["fedray", "model=moe_lm", "aggregation=sparse"])
    with pytest.raises(SystemExit) as info:
        engine.app.run.main()
    assert str(info.value) == (
        "fedray: error: model: moe_lm needs token sequences (population=zipf_text or "
        "shakespeare); population=synthetic gives feature vectors"
    )
