"""The release audit's machinery: neighbouring data sets, a recording wandb, and the comparison.

A private run is run four times with identical noise: on D, on D' where one client's data is
replaced by zeros (and its example count changed), on D' where reading that client's data
raises, and on D' where its update is non-finite. Everything the run writes (metrics.jsonl,
summary.json, the participation log, the checkpoint's schedule, and what it hands wandb: logged
rows, images, summary) is collected, and every key declared `PUBLIC` in `engine.app.metric_keys`
must be identical across the four. The figures are compared by the arrays
they are drawn from (`_plot_data`), which the PNGs are a deterministic function of.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.app.build import as_dict, build_experiment
from engine.app.checkpoint import load
from engine.app.metric_keys import Release, declared
from engine.app.runner import run_experiment
from engine.plan import Experiment, Tracking
from engine.population import ClientData, ClientRegistry, Population
from engine.runtime import LocalBackend, initial_weights, make_scheduler
from engine.scheduling import read_log
from engine.training import ClientUpdate, Faults
from tests.conftest import compose_config


class DataError(ValueError):
    """What a client whose data cannot be read raises."""


@dataclass(frozen=True)
class Neighbour(Population):
    """`base` with one client's data changed.

    kind "zeroed": the client's data replaced by zeros, and twice its examples plus one (its
    example count is data too); kind "raises": reading its data raises `DataError`.
    """

    base: Population
    client: int
    kind: str

    def __getattr__(self, name: str) -> Any:  # num_classes, num_features, ...
        if name.startswith("__") or name == "base":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def num_clients(self) -> int:  # type: ignore[override]
        return self.base.num_clients

    def num_examples(self, ids: np.ndarray) -> np.ndarray:
        counts = np.array(self.base.num_examples(ids), dtype=np.int64)
        if self.kind == "zeroed":
            counts[np.asarray(ids) == self.client] *= 2
            counts[np.asarray(ids) == self.client] += 1
        return counts

    def client_data(self, client_id: int) -> ClientData:
        data = self.base.client_data(client_id)
        if client_id != self.client:
            return data
        if self.kind == "raises":
            raise DataError(f"client {client_id}: label={data.y.ravel()[0]} is corrupt")
        n = 2 * len(data) + 1
        return ClientData(
            np.zeros((n, *data.x.shape[1:]), data.x.dtype),
            np.zeros((n, *data.y.shape[1:]), data.y.dtype),
        )

    def held_out_ids(self, count: int) -> np.ndarray:
        return self.base.held_out_ids(count)

    def registry(self) -> ClientRegistry:
        return ClientRegistry(self.num_examples(np.arange(self.num_clients)).astype(np.int32))


@dataclass(frozen=True)
class NonFiniteClient(Faults):
    """No injected faults, except that one client's update is all NaN in every round."""

    client: int = -1

    def maybe_poison(
        self, update: ClientUpdate, seed: int, round_idx: int, client_id: int
    ) -> ClientUpdate:
        if client_id != self.client:
            return update
        return dataclasses.replace(update, delta=np.full_like(update.delta, np.nan))


class RecordingWandb(types.ModuleType):
    """Stands for the `wandb` module: records what a run hands it, sends nothing."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.calls: list[tuple[str, Any]] = []

    def init(self, **kwargs: Any) -> Any:
        self.calls.append(("init", {k: v for k, v in kwargs.items() if k not in ("dir", "name")}))
        record = self.calls

        class Run:
            id = "audit"
            dir = "."
            settings = types.SimpleNamespace(mode="disabled")
            summary = types.SimpleNamespace(update=lambda s: record.append(("summary", dict(s))))

            def define_metric(self, *args: Any, **kwargs: Any) -> None:
                record.append(("define_metric", (args, kwargs)))

            def log(self, values: dict[str, Any]) -> None:
                record.append(("log", dict(values)))

            def finish(self) -> None:
                record.append(("finish", None))

        return Run()

    @staticmethod
    def Image(path: str) -> str:  # noqa: N802 (wandb's name)
        return "image:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _plot_data(*arrays: Any) -> Path:
    """Writes the arrays a figure would be drawn from to its path; returns the path."""
    *data, path = arrays
    Path(path).write_bytes(b"".join(np.ascontiguousarray(a).tobytes() for a in data))
    return Path(path)


@pytest.fixture(scope="module")
def audit_env() -> Iterator[RecordingWandb]:
    """A recording wandb, figures as their data, and each (rho, delta) accounted once."""
    import engine.app.runner
    import mechanisms.accounting

    recorder = RecordingWandb()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "wandb", recorder)
        patch.setattr(engine.app.runner, "participation_histogram", _plot_data)
        patch.setattr(engine.app.runner, "availability_over_time", _plot_data)
        cached = functools.cache(mechanisms.accounting.epsilons)
        patch.setattr(mechanisms.accounting, "epsilons", cached)
        yield recorder


def first_client(experiment: Experiment) -> int:
    """A client of round 0's cohort (the schedule is public, so it is the same on D')."""
    registry = experiment.population.registry()
    scheduler = make_scheduler(experiment, registry, initial_weights(experiment).nbytes)
    return int(scheduler.plan(0, scheduler.start_s).cohort[0])


def neighbours(experiment: Experiment) -> dict[str, Experiment]:
    """D, and D' with one client's data zeroed, raising when read, or giving a NaN update."""
    client = first_client(experiment)

    def changed(kind: str) -> Experiment:
        return dataclasses.replace(
            experiment, population=Neighbour(experiment.population, client, kind)
        )

    return {
        "D": experiment,
        "zeroed": changed("zeroed"),
        "raises": changed("raises"),
        "nonfinite": dataclasses.replace(experiment, faults=NonFiniteClient(client=client)),
    }


def outputs(
    experiment: Experiment, config: dict[str, Any], out: Path, recorder: RecordingWandb
) -> dict[str, Any]:
    """Runs `experiment` in-process; everything it wrote or handed wandb, by where it went.

    "schedule": the participation log and the checkpoint's scheduler state (clock, ledger),
    which are public; the checkpoint's server state is the noisy release's.
    """
    recorder.calls.clear()
    tracking = Tracking(mode="offline", progress=False, participation_log=True)
    path = run_experiment(experiment, tracking, out, config, "audit", backend=LocalBackend())
    lines = (out / "metrics.jsonl").read_text().splitlines()
    checkpoint = load(out)
    assert checkpoint is not None
    rounds, clients = read_log(out / "participation.parquet")
    schedule = [rounds.tolist(), clients.tolist(), _plain(checkpoint.scheduler)]
    return {
        "metrics.jsonl": [json.loads(line) for line in lines],
        "summary.json": json.loads(path.read_text()),
        "wandb": list(recorder.calls),
        "schedule": schedule,
    }


def _plain(value: Any) -> Any:
    """Arrays as lists, inside dicts and lists (comparable with ==)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value.tolist() if isinstance(value, np.ndarray) else value


def _records(outputs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) for every dict of keys a run released."""
    for row in outputs["metrics.jsonl"]:
        yield f"metrics.jsonl round {row.get('round')}", row
    yield "summary.json", outputs["summary.json"]
    for index, (kind, value) in enumerate(outputs["wandb"]):
        if kind in ("log", "summary"):
            yield f"wandb {kind} #{index}", value


def differences(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Where the runs' released records differ in a key that may not tell them apart."""
    found = []
    base, *others = runs
    shapes = {name: [(where, sorted(rec)) for where, rec in _records(runs[name])] for name in runs}
    for name in others:
        if shapes[name] != shapes[base]:
            found.append(f"{name}: the records or their keys differ from {base}'s")
    for name in others:
        pairs = zip(_records(runs[base]), _records(runs[name]), strict=False)
        for (where, mine), (_, theirs) in pairs:
            for key in sorted(set(mine) & set(theirs)):
                release = declared(key).release
                if release is Release.NONPRIVATE:
                    found.append(f"{where}: {key} is logged by a private run")
                elif release is Release.PUBLIC and not _same(mine[key], theirs[key]):
                    found.append(f"{name} {where}: {key} = {theirs[key]!r}, on D {mine[key]!r}")
        if runs[name]["schedule"] != runs[base]["schedule"]:
            found.append(f"{name}: the participation log or the checkpointed schedule differs")
    return found


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def audit(overrides: Sequence[str], out: Path, recorder: RecordingWandb) -> list[str]:
    """Runs the config of `overrides` on D and its two neighbours; the differences found."""
    cfg = compose_config(*overrides)
    experiment, _ = build_experiment(cfg)
    assert experiment.mechanism.noise_multiplier > 0, "the audit is of private runs"
    config = as_dict(cfg)
    runs = {
        name: outputs(neighbour, config, out / name, recorder)
        for name, neighbour in neighbours(experiment).items()
    }
    models = {name: run["summary.json"]["model_sha256"] for name, run in runs.items()}
    vacuous = [f"{name} released D's very model" for name in models if models[name] == models["D"]]
    return vacuous[1:] + differences(runs)  # the first is D itself
