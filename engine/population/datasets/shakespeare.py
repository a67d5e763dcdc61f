"""LEAF Shakespeare: next-character prediction, one client per speaking role.

A LEAF Shakespeare file has the LEAF layout (see `datasets.leaf`) with text examples: a
user's `x` is a list of 80-character strings and its `y` the list of the characters that follow
them. Characters map to a fixed vocabulary (`VOCABULARY`): id 0 is out-of-vocabulary, ids 1..96
are newline then printable ASCII from " " to "~". An example becomes x = the ids of the string,
int64 [80], and y = the ids of the string shifted by one with the next character at the end,
int64 [80], so a client's data is the `x`, `y` pair of a language model.

The windows (string + next character, 81 ids) are pooled in a `FederatedArrays` as float32
features with the last id as the label, which keeps its partitions and held-out machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from engine.population.base import ClientData, InputKind, Inputs
from engine.population.datasets.leaf import read_leaf
from engine.population.datasets.loading import FilePopulation

VOCABULARY = "\n" + "".join(chr(code) for code in range(32, 127))
OOV = 0
VOCAB_SIZE = len(VOCABULARY) + 1

_ASCII_IDS = np.full(128, OOV, np.int64)
_ASCII_IDS[[ord(char) for char in VOCABULARY]] = np.arange(1, VOCAB_SIZE)


def encode(text: str) -> np.ndarray:
    """Vocabulary ids, int64 [len(text)], of the characters of `text` (OOV outside it)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
    return np.where(codes < 128, _ASCII_IDS[np.minimum(codes, 127)], OOV)


def decode(ids: np.ndarray) -> str:
    """The text of vocabulary ids; OOV becomes U+FFFD."""
    return "".join(VOCABULARY[i - 1] if i != OOV else "\ufffd" for i in np.asarray(ids).ravel())


def windows(x: Any, y: Any) -> ClientData:
    """One user's examples as windows: x float32 [n, L + 1] ids, y int64 [n] (the last id).

    Raises:
        ValueError: With a one-line reason, if `x` is not a list of strings of one length, `y`
            not a list of as many one-character strings.
    """
    if not isinstance(x, list) or not all(isinstance(s, str) for s in x):
        raise ValueError("'x' must be a list of strings")
    if not isinstance(y, list) or not all(isinstance(s, str) and len(s) == 1 for s in y):
        raise ValueError("'y' must be a list of one-character strings")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} strings in 'x' but {len(y)} characters in 'y'")
    if not x:
        return ClientData(x=np.empty((0, 0), np.float32), y=np.empty(0, np.int64))
    length = len(x[0])
    if length == 0 or any(len(s) != length for s in x):
        raise ValueError(f"the strings of 'x' must all have one length > 0, the first has {length}")
    ids = encode("".join(s + c for s, c in zip(x, y, strict=True))).reshape(len(x), length + 1)
    return ClientData(x=ids.astype(np.float32), y=ids[:, -1].copy())


def read_shakespeare(path: str, key: str = "path") -> list[tuple[str, ClientData]]:
    """Reads a LEAF Shakespeare file, or every `*.json` file of a directory in name order.

    Returns:
        One `("<file>: user '<user>'", windows)` per user, in file order (see `windows`).

    Raises:
        ConfigError: `(key, "<file>: <reason>")` for a missing or malformed file, or a user listed
            twice.
    """
    return read_leaf(path, key, windows)


@dataclass(frozen=True)
class ShakespearePopulation(FilePopulation):
    """LEAF Shakespeare as next-character prediction; one client per LEAF user (role).

    Users without examples are dropped; held-out clients are the users of `test_path`, or a
    seeded `held_out_fraction` of the users of `path` (see `FilePopulation`). `num_features` is
    the string length (80 in LEAF) and `num_classes` the vocabulary size `VOCAB_SIZE`.

    Attributes:
        path: LEAF Shakespeare JSON file or directory of them (the training data).
        test_path: Optional file or directory of held-out users.
        seed: Seed of the held-out choice when there is no `test_path`.
        held_out_fraction: Share of users held out when there is no `test_path`, in [0, 1).
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.TOKENS)
    path: str
    test_path: str | None = None
    seed: int = 0
    held_out_fraction: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "num_features", self.arrays.num_features - 1)
        object.__setattr__(self, "num_classes", VOCAB_SIZE)

    def read(self, path: str, key: str) -> list[tuple[str, ClientData]]:
        """Reads a LEAF Shakespeare file or directory as windows."""
        return read_shakespeare(path, key)

    def client_data(self, client_id: int) -> ClientData:
        """Client `client_id`'s examples: x, y int64 [n, L], y = x shifted by one character."""
        ids = self.arrays.client_data(client_id).x.astype(np.int64)
        return ClientData(x=ids[:, :-1].copy(), y=ids[:, 1:].copy())
