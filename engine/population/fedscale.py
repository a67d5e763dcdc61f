"""FedScale-style traces: device availability (``client_behave_trace``) and device capacity.

Both are dicts keyed by integer client id, as FedScale ships them (pickled), or the same structure
as JSON (string keys that are decimal integers). Formats, as FedScale documents and reads them:

- behaviour: ``{id: {"active": [s0, s1, ...], "inactive": [e0, e1, ...], "finish_time": T,
  "duration": D, "model": "..."}}``, times in seconds. The client is online at t iff
  ``active[i] <= t mod T <= inactive[i]`` for some i (FedScale's closed windows); the pattern
  repeats every T. ``duration`` (total online time) and ``model`` are not used.
- capacity: ``{id: {"computation": ms_per_sample, "communication": kbps}}``: inference latency
  in milliseconds per sample and bandwidth in kilobits per second.

Entry i is the i-th key in increasing key order; client c uses entry c mod (number of entries).

Pickle runs arbitrary code while loading: only load pickles from files you trust. JSON is safe.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from common.errors import require
from engine.population.devices import DeviceProfiles
from engine.population.trace_files import resolve_path, trace_error
from engine.population.traces import ReplayedAvailability


def load_mapping(path: str) -> list[tuple[int, Any]]:
    """Reads a FedScale-style dict from pickle or JSON, as (key, entry) pairs sorted by key.

    A ``.json`` file, or a file whose first non-blank byte is ``{``, is read as JSON; anything
    else as pickle. Pickle can run arbitrary code: load pickles only from trusted files.

    Args:
        path: ``fedray:NAME`` or a filesystem path.

    Raises:
        ConfigError: Under key ``path``, one line naming the file (and the key when one is bad).
    """
    file = resolve_path(path)
    data = file.read_bytes()
    as_json = file.suffix.lower() == ".json" or data.lstrip()[:1] == b"{"
    try:
        raw = json.loads(data) if as_json else pickle.loads(data)
    except Exception as exc:  # Unpickling can raise anything.
        kind = "JSON" if as_json else "pickle"
        raise trace_error(path, None, f"not a {kind} file ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, Mapping):
        raise trace_error(
            path, None, f"expected a dict keyed by client id, got {type(raw).__name__}"
        )
    if not raw:
        raise trace_error(path, None, "no clients")
    entries: dict[int, Any] = {}
    for key, entry in raw.items():
        try:
            if isinstance(key, bool):
                raise ValueError
            number = int(key) if isinstance(key, str) else int(key.__index__())
        except (ValueError, TypeError, AttributeError):
            raise trace_error(path, f"client {key!r}", "key is not an integer") from None
        if number in entries:
            raise trace_error(path, f"client {key!r}", "duplicate key")
        entries[number] = entry
    return sorted(entries.items())


def _number(path: str, key: int, entry: Any, name: str) -> float:
    """One finite number field of an entry."""
    if not isinstance(entry, Mapping):
        raise trace_error(path, f"client {key}", f"expected a dict, got {type(entry).__name__}")
    if name not in entry:
        raise trace_error(path, f"client {key}", f"missing {name!r}")
    value = entry[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise trace_error(path, f"client {key}", f"{name} {value!r} is not a number")
    if not np.isfinite(value):
        raise trace_error(path, f"client {key}", f"{name} {value!r} is not finite")
    return float(value)


def _times(path: str, key: int, entry: Any, name: str) -> np.ndarray:
    """One list-of-times field of an entry, as float64."""
    value = entry.get(name) if isinstance(entry, Mapping) else None
    if not isinstance(value, (list, tuple)):
        raise trace_error(path, f"client {key}", f"{name!r} must be a list of times")
    try:
        times = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise trace_error(path, f"client {key}", f"{name} has a non-numeric time") from None
    if times.ndim != 1 or not np.isfinite(times).all():
        raise trace_error(path, f"client {key}", f"{name} must be a flat list of finite times")
    return times


@dataclass(frozen=True)
class BehaviourTrace:
    """Validated behaviour trace: closed online windows, flattened over all traces.

    Attributes:
        keys: int64 [T], client keys in increasing order.
        finish_time: float64 [T], each trace's period in seconds.
        owner: int64 [K], index (0..T-1) of the trace each window belongs to.
        active: float64 [K], window starts (inclusive).
        inactive: float64 [K], window ends (inclusive).
    """

    keys: np.ndarray
    finish_time: np.ndarray
    owner: np.ndarray
    active: np.ndarray
    inactive: np.ndarray


def load_behaviour(path: str) -> BehaviourTrace:
    """Reads and validates a FedScale ``client_behave_trace`` (pickle or JSON).

    Each entry needs ``active`` and ``inactive`` lists of equal length and ``finish_time > 0``;
    times are >= 0 and interleave without going back:
    ``active[0] <= inactive[0] <= active[1] <= inactive[1] <= ...``.

    Raises:
        ConfigError: Under key ``path``, one line naming the file and the client key.
    """
    owners, actives, inactives, finish, keys = [], [], [], [], []
    for index, (key, entry) in enumerate(load_mapping(path)):
        period = _number(path, key, entry, "finish_time")
        active = _times(path, key, entry, "active")
        inactive = _times(path, key, entry, "inactive")
        where = f"client {key}"
        if period <= 0:
            raise trace_error(path, where, f"finish_time {period} <= 0")
        if len(active) != len(inactive):
            raise trace_error(
                path, where, f"{len(active)} active times but {len(inactive)} inactive times"
            )
        bounds = np.stack([active, inactive], axis=1).ravel()
        if len(bounds) and bounds.min() < 0:
            raise trace_error(path, where, f"negative time {bounds.min()}")
        back = np.flatnonzero(bounds[1:] < bounds[:-1])
        if len(back):
            i = int(back[0])
            raise trace_error(
                path, where, f"times go back: {bounds[i]} then {bounds[i + 1]} (window {i // 2})"
            )
        keys.append(key)
        finish.append(period)
        owners.append(np.full(len(active), index, dtype=np.int64))
        actives.append(active)
        inactives.append(inactive)
    return BehaviourTrace(
        keys=np.asarray(keys, dtype=np.int64),
        finish_time=np.asarray(finish, dtype=np.float64),
        owner=np.concatenate(owners),
        active=np.concatenate(actives),
        inactive=np.concatenate(inactives),
    )


@dataclass(frozen=True)
class FedScaleAvailability(ReplayedAvailability):
    """Availability from a FedScale behaviour trace, as FedScale's client manager decides it.

    Client c follows trace ``c mod T`` (T traces, in increasing key order): it is online at t
    iff ``active[i] <= t mod finish_time <= inactive[i]`` for some window i. This is the
    stateless reading of FedScale's ``is_active``, whose cached window index can skip windows
    when queries jump. Each call costs O(windows) plus one O(N) cyclic copy.

    Attributes:
        num_clients: Population size N.
        path: Behaviour trace (pickle, or JSON); ``fedray:NAME`` for shipped files. Pickles
            run code while loading: only use trusted files.
    """

    num_clients: int
    path: str

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        _ = self._trace

    @cached_property
    def _trace(self) -> BehaviourTrace:
        return load_behaviour(self.path)

    @property
    def num_traces(self) -> int:
        """T, the number of client traces in the file."""
        return len(self._trace.keys)

    def _trace_state(self, t: float) -> np.ndarray:
        """Bool mask over the T traces at time `t`."""
        tr = self._trace
        norm = np.mod(float(t), tr.finish_time)[tr.owner]
        inside = (tr.active <= norm) & (norm <= tr.inactive)
        state = np.zeros(len(tr.keys), dtype=bool)
        state[tr.owner[inside]] = True
        return state


def load_capacity(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a FedScale ``client_device_capacity``: (ms per sample, kbps), in key order.

    Raises:
        ConfigError: Under key ``path``, one line naming the file and the client key.
    """
    computation: list[float] = []
    communication: list[float] = []
    for key, entry in load_mapping(path):
        for name, out in (("computation", computation), ("communication", communication)):
            value = _number(path, key, entry, name)
            if value <= 0:
                raise trace_error(path, f"client {key}", f"{name} {value} <= 0")
            out.append(value)
    return np.asarray(computation), np.asarray(communication)


@dataclass(frozen=True)
class FedScaleDevices(DeviceProfiles):
    """Device speeds from a FedScale capacity file; client c uses entry c mod (entries).

    ``computation`` is FedScale's inference latency in ms per sample and ``communication`` its
    bandwidth in kbit/s (FedScale divides model sizes in kbit by it). FedScale charges a
    training sample ``augmentation_factor`` (3.0) inference latencies; `compute_factor` plays
    that role here.

    Attributes:
        path: Capacity file (pickle, or JSON); ``fedray:NAME`` for shipped files. Pickles run
            code while loading: only use trusted files.
        compute_factor: Seconds per example = compute_factor * computation / 1000.
    """

    path: str
    compute_factor: float = 1.0

    def __post_init__(self) -> None:
        require(
            self.compute_factor > 0, "compute_factor", f"must be > 0, got {self.compute_factor}"
        )
        _ = self._table

    @cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        ms_per_sample, kbps = load_capacity(self.path)
        return self.compute_factor * ms_per_sample / 1000.0, kbps * 1000.0 / 8.0

    @property
    def num_entries(self) -> int:
        """Number of capacity entries in the file."""
        return len(self._table[0])

    @staticmethod
    def _lookup(column: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return column[np.asarray(ids, dtype=np.int64) % len(column)]

    def seconds_per_example(self, ids: np.ndarray) -> np.ndarray:
        """``compute_factor * computation / 1000`` of entry c mod (entries), per client."""
        return self._lookup(self._table[0], ids)

    def bandwidth(self, ids: np.ndarray) -> np.ndarray:
        """``communication * 1000 / 8`` bytes per second of entry c mod (entries), per client."""
        return self._lookup(self._table[1], ids)
