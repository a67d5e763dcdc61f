"""The benchmark's systems, models and cases, and the workload spec every peer runs.

A case is one model x population x cohort, the same for every system. Its spec (see
`scripts/peers/peer_common.Spec`) is fedray's own config (`conf/model`, `conf/population`), so
that peers build fedray's population and model, plus the local training settings and, when
fedray ran first, the cohorts it trained.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = REPO_ROOT / "scripts" / "peers"
SYSTEMS = ("fedray", "flower", "pfl")  # fedray first: the peers replay its cohorts

Cohorts = list[list[int]]
"""The client ids each round trained, round 0 first."""


@dataclass(frozen=True)
class Peer:
    """A peer system: its venv, what it needs installed and how to check it.

    Attributes:
        name: System name.
        requirement: The peer's own pip requirement.
        imports: Modules that must import in its venv.
        script: Its workload script under `scripts/peers/`.
    """

    name: str
    requirement: str
    imports: tuple[str, ...]
    script: str


PEER_TABLE = {
    "flower": Peer("flower", "flwr[simulation]", ("flwr", "ray", "torch", "scipy"), "flower"),
    "pfl": Peer("pfl", "pfl", ("pfl", "torch", "scipy"), "pfl"),
}


@dataclass(frozen=True)
class ModelCase:
    """A model of the benchmark and the population it trains on, by fedray config name.

    Attributes:
        name: Name on the command line.
        model: `conf/model/<model>.yaml`.
        population: `conf/population/<population>.yaml`.
    """

    name: str
    model: str
    population: str


MODEL_TABLE = {
    "logreg": ModelCase("logreg", "logreg", "synthetic"),
    "cnn": ModelCase("cnn", "cnn", "femnist"),
}


@dataclass(frozen=True)
class Case:
    """One benchmark case, the same for every system.

    Attributes:
        model: Key of `MODEL_TABLE`.
        num_clients: Population size.
        cohort: Clients per round.
        rounds: Rounds (round 0 is excluded from the steady statistics).
        seed: Run seed.
        epochs: Local epochs.
        batch_size: Local batch size.
        lr: Local learning rate.
        eval_clients: Held-out clients of the final evaluation.
    """

    model: str
    num_clients: int
    cohort: int
    rounds: int
    seed: int = 0
    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.1
    eval_clients: int = 100

    def describe(self) -> dict[str, Any]:
        """The case's fields of a result line."""
        return {
            "model": self.model,
            "population": self.num_clients,
            "cohort": self.cohort,
            "rounds": self.rounds,
            "seed": self.seed,
        }


class UnavailableError(RuntimeError):
    """A model or population of the table that this checkout does not have (yet)."""


def _conf(group: str, name: str) -> tuple[str, dict[str, Any]]:
    """The `_target_` and the literal keyword arguments of `conf/<group>/<name>.yaml`."""
    path = REPO_ROOT / "conf" / group / f"{name}.yaml"
    if not path.exists():
        raise UnavailableError(f"no {path.relative_to(REPO_ROOT)}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    kwargs = {
        key: value
        for key, value in raw.items()
        if not key.startswith("_")
        and key != "defaults"
        and not (isinstance(value, str) and "${" in value)
    }
    return str(raw.get("_target_", "")), kwargs


def _check_target(target: str) -> None:
    """Raises `UnavailableError` unless `target` ("pkg.module.Name") imports here."""
    module, _, name = target.rpartition(".")
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise UnavailableError(f"{target} is not importable ({error})") from None


def workload_spec(case: Case, cohorts: Cohorts | None = None) -> dict[str, Any]:
    """The peer workloads' JSON spec of `case` (see `scripts/peers/peer_common.Spec`).

    Args:
        case: The case.
        cohorts: The cohorts the peer must train (fedray's); None lets it sample its own.

    Raises:
        UnavailableError: If the model or population of the case is not in this checkout.
    """
    entry = MODEL_TABLE[case.model]
    model_target, model_kwargs = _conf("model", entry.model)
    population_target, population_kwargs = _conf("population", entry.population)
    for target in (model_target, population_target):
        _check_target(target)
    population_kwargs.update(num_clients=case.num_clients, seed=case.seed)
    return {
        "model": case.model,
        "model_target": model_target,
        "model_kwargs": model_kwargs,
        "population_target": population_target,
        "population_kwargs": population_kwargs,
        "cohort": case.cohort,
        "rounds": case.rounds,
        "epochs": case.epochs,
        "batch_size": case.batch_size,
        "lr": case.lr,
        "seed": case.seed,
        "eval_clients": case.eval_clients,
        "cohorts": cohorts,
    }


def why_not(case: Case) -> str | None:
    """Why `case` cannot run in any system, or None if it can."""
    if case.cohort > case.num_clients:
        return f"cohort {case.cohort} > population {case.num_clients}"
    try:
        workload_spec(case)
    except UnavailableError as error:
        return f"{case.model} not available in this checkout: {error}"
    return None
