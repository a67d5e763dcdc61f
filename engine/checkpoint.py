"""Checkpoints: a run's whole state after a round, written atomically, and read back to resume.

Everything random in a run is drawn from (seed, stream, round, ...), so the state is only what
accumulates: the server's parameters, strategy and mechanism state (the stored noise of
correlated mechanisms included) and clip norm; the participation ledger and the simulated
clock; and the driver's per-round history. A resumed run therefore replays the remaining rounds
exactly and ends with the same `model_sha256` as an uninterrupted one.

The file is a pickle (of host tensors, arrays and plain values) written to a temporary file,
flushed to disk and renamed over `checkpoint.pkl`, so a kill at any moment leaves either the
previous checkpoint or the new one, never half of one. Only load checkpoints you wrote.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "checkpoint.pkl"
FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """The state of a run after its first `rounds_done` rounds.

    Attributes:
        rounds_done: Rounds applied, committed and logged; the resumed run starts at this one.
        config: The resolved config that decides the run's results (see `run_defining`).
        server: `ParameterServer.state_dict()`.
        scheduler: `Scheduler.state_dict()` (the simulated clock and the ledger).
        history: Each completed round's metrics, as logged.
        final: The latest evaluation's figures (for the summary).
        tracker: `RunTracker.state_dict()` (the wandb run to continue).
    """

    rounds_done: int
    config: dict[str, Any]
    server: dict[str, Any]
    scheduler: dict[str, Any]
    history: list[dict[str, Any]]
    final: dict[str, float]
    tracker: dict[str, Any]


# Sections that never change a run's results: where it runs and where its metrics go.
_NOT_DEFINING = ("resume", "tracking", "cluster")


def run_defining(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides a run's results.

    A run may resume on another cluster or with other tracking settings (results are the same
    whatever the number of workers), but with nothing else changed.
    """
    return {key: value for key, value in config.items() if key not in _NOT_DEFINING}


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested config dicts, sorted."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        mine, theirs = saved.get(key), current.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            out.extend(differences(mine, theirs, f"{prefix}{key}."))
        elif mine != theirs:
            out.append(f"{prefix}{key}")
    return out


def save(checkpoint: Checkpoint, output_dir: Path) -> Path:
    """Writes `checkpoint` atomically as `output_dir/checkpoint.pkl`; returns its path."""
    path = output_dir / FILE_NAME
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as stream:
        pickle.dump({"format": FORMAT, "checkpoint": checkpoint}, stream, protocol=5)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    return path


def load(output_dir: Path) -> Checkpoint | None:
    """The checkpoint of `output_dir`, or None if it has none.

    Raises:
        ValueError: If the file is not a fedray checkpoint of this format.
    """
    path = output_dir / FILE_NAME
    if not path.is_file():
        return None
    with path.open("rb") as stream:
        try:
            content = pickle.load(stream)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
            raise ValueError(f"{path}: not a fedray checkpoint ({error})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fedray checkpoint of format {FORMAT}")
    checkpoint = content["checkpoint"]
    if not isinstance(checkpoint, Checkpoint):
        raise ValueError(f"{path}: not a fedray checkpoint")
    return checkpoint
