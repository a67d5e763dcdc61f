"""TensorFlow Federated's HDF5 client data (EMNIST, Shakespeare-as-ids, CIFAR-100, ...).

TFF's `HDF5ClientData` files hold one group per client under `examples/`, and one dataset per
feature inside it: e.g. `examples/f0000_14/pixels` (float32 [n, 28, 28]) and
`examples/f0000_14/label` (int32 [n]) in federated EMNIST.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from common.errors import ConfigError, require
from engine.population.base import ClientData, InputKind, Inputs
from engine.population.datasets.loading import FilePopulation, client_from_raw, one_line

_EXAMPLES = "examples"


def read_h5(path: str, x_key: str, y_key: str, key: str = "path") -> list[tuple[str, ClientData]]:
    """Reads every client of a TFF HDF5 file.

    Args:
        path: The HDF5 file.
        x_key: Feature holding the inputs, [n, ...] numbers (flattened).
        y_key: Feature holding the labels, [n] non-negative integers.
        key: Config key to blame in errors.

    Returns:
        One `("<file>: client '<id>'", ClientData)` per client, in sorted client-id order.

    Raises:
        ConfigError: `(key, "<file>: <reason>")` for a missing or malformed file, or a client
            without one of the two features.
    """
    import h5py  # Imported here: only this loader needs it.

    require(Path(path).is_file(), key, f"{path}: no such file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ConfigError(key, f"{path}: not an HDF5 file ({one_line(error)})") from None
    named: list[tuple[str, ClientData]] = []
    with handle:
        group = handle.get(_EXAMPLES)
        require(isinstance(group, h5py.Group), key, f"{path}: no group {_EXAMPLES!r}")
        for client_id in sorted(group.keys()):
            client = group[client_id]
            where = f"{path}: client {client_id!r}"
            require(isinstance(client, h5py.Group), key, f"{where} is not a group")
            for feature in (x_key, y_key):
                require(
                    isinstance(client.get(feature), h5py.Dataset),
                    key,
                    f"{where} has no feature {feature!r}",
                )
            try:
                named.append((where, client_from_raw(client[x_key][()], client[y_key][()])))
            except ValueError as error:
                raise ConfigError(key, f"{where}: {error}") from None
    return named


@dataclass(frozen=True)
class H5Population(FilePopulation):
    """A population read from a TFF HDF5 file; one client per group of `examples/`.

    Clients without examples are dropped; the others take ids 0..N-1 in sorted client-id order.
    Held-out clients are the clients of `test_path` (ids N, N+1, ... in sorted order), or else a
    seeded `held_out_fraction` of the clients of `path`, taken out of training. (TFF's EMNIST test
    file holds the training writers again, with their test examples.)

    Attributes:
        path: The HDF5 file of the training clients.
        x_key: Name of the input feature, e.g. "pixels".
        y_key: Name of the label feature, e.g. "label".
        test_path: Optional HDF5 file of the held-out clients.
        seed: Seed of the held-out choice when there is no `test_path`.
        held_out_fraction: Share of clients held out when there is no `test_path`, in [0, 1).
    """

    inputs: ClassVar[Inputs] = Inputs(InputKind.FEATURES)  # num_features: the file's
    path: str
    x_key: str = "pixels"
    y_key: str = "label"
    test_path: str | None = None
    seed: int = 0
    held_out_fraction: float = 0.1

    def __post_init__(self) -> None:
        require(len(self.x_key) > 0, "x_key", "must not be empty")
        require(len(self.y_key) > 0, "y_key", "must not be empty")
        require(self.x_key != self.y_key, "y_key", f"must differ from x_key {self.x_key!r}")
        super().__post_init__()

    def read(self, path: str, key: str) -> list[tuple[str, ClientData]]:
        """Reads a TFF HDF5 file."""
        return read_h5(path, self.x_key, self.y_key, key)
