"""LEAF-format federated datasets (Caldas et al. 2018): FEMNIST, Synthetic, CelebA features, ...

A LEAF file is JSON: `{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...],
"y": [...]}}}`. LEAF's preprocessing writes a dataset as several such files in a directory,
usually with `train/` and `test/` directories. `read_leaf` takes numeric features and integer
labels by default; a `convert` function reads other examples (Shakespeare's text, for one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from common.errors import ConfigError, require
from engine.population.base import ClientData, InputKind, Inputs
from engine.population.datasets.loading import FilePopulation, client_from_raw, one_line

_KEYS = ("users", "num_samples", "user_data")

# Turns one user's raw `x` and `y` into its examples; raises ValueError with a one-line reason.
Convert = Callable[[Any, Any], ClientData]


def _json_files(path: str, key: str) -> list[Path]:
    root = Path(path)
    if root.is_dir():
        files = sorted(root.glob("*.json"))
        require(len(files) > 0, key, f"{path}: directory has no *.json files")
        return files
    require(root.is_file(), key, f"{path}: no such file or directory")
    return [root]


def _read_json(file: Path, key: str) -> Any:
    try:
        with file.open() as stream:
            return json.load(stream)
    except OSError as error:
        raise ConfigError(key, f"{file}: cannot be read ({one_line(error.strerror)})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(key, f"{file}: not valid JSON ({one_line(error)})") from None


def _read_file(file: Path, key: str, convert: Convert) -> list[tuple[str, ClientData]]:
    doc = _read_json(file, key)
    require(isinstance(doc, dict), key, f"{file}: top level must be a JSON object")
    for name in _KEYS:
        require(name in doc, key, f"{file}: missing key {name!r}")
    users, counts, data = doc["users"], doc["num_samples"], doc["user_data"]
    require(isinstance(users, list), key, f"{file}: 'users' must be a list")
    require(isinstance(counts, list), key, f"{file}: 'num_samples' must be a list")
    require(isinstance(data, dict), key, f"{file}: 'user_data' must be an object")
    require(
        len(users) == len(counts),
        key,
        f"{file}: {len(users)} users but {len(counts)} entries in 'num_samples'",
    )
    clients = []
    for user, count in zip(users, counts, strict=True):
        require(isinstance(user, str), key, f"{file}: user {user!r} is not a string")
        entry = data.get(user)
        require(entry is not None, key, f"{file}: user {user!r} is missing from 'user_data'")
        require(
            isinstance(entry, dict) and "x" in entry and "y" in entry,
            key,
            f"{file}: user {user!r} needs keys 'x' and 'y' in 'user_data'",
        )
        try:
            client = convert(entry["x"], entry["y"])
        except ValueError as error:
            raise ConfigError(key, f"{file}: user {user!r}: {error}") from None
        require(
            count == len(client),
            key,
            f"{file}: user {user!r} has {len(client)} examples, 'num_samples' says {count}",
        )
        clients.append((user, client))
    return clients


def read_leaf(
    path: str, key: str = "path", convert: Convert = client_from_raw
) -> list[tuple[str, ClientData]]:
    """Reads a LEAF file, or every `*.json` file of a directory in name order.

    Args:
        path: A LEAF JSON file or a directory of them.
        key: Config key to blame in errors.
        convert: Makes one user's examples from its raw `x` and `y` (default: numeric
            features and integer labels); its ValueError becomes a ConfigError naming the user.

    Returns:
        One `("<file>: user '<user>'", ClientData)` per user, in file order and, within a file,
        in `users` order.

    Raises:
        ConfigError: `(key, "<file>: <reason>")` for a missing or malformed file, or a user listed
            twice.
    """
    named: list[tuple[str, ClientData]] = []
    first: dict[str, Path] = {}
    for file in _json_files(path, key):
        for user, client in _read_file(file, key, convert):
            require(user not in first, key, f"{file}: user {user!r} is also in {first.get(user)}")
            first[user] = file
            named.append((f"{file}: user {user!r}", client))
    return named


@dataclass(frozen=True)
class LeafPopulation(FilePopulation):
    """A population read from LEAF JSON files; one client per LEAF user.

    Users without examples are dropped; the others keep their file order as ids 0..N-1. Held-out
    clients are the users of `test_path` (ids N, N+1, ... in file order), or else a seeded
    `held_out_fraction` of the users of `path`, taken out of training. With LEAF's default
    per-sample split the test users are the training users again, holding their test examples.

    Attributes:
        path: LEAF JSON file or directory of them (the training data).
        test_path: Optional file or directory of held-out users.
        seed: Seed of the held-out choice when there is no `test_path`.
        held_out_fraction: Share of users held out when there is no `test_path`, in [0, 1).
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.FEATURES)  # num_features: the file's
    path: str
    test_path: str | None = None
    seed: int = 0
    held_out_fraction: float = 0.1

    def read(self, path: str, key: str) -> list[tuple[str, ClientData]]:
        """Reads a LEAF file or directory."""
        return read_leaf(path, key)
