"""Checkpoints: a run's whole state after a round, written atomically, and read back to resume.

Everything random in a run is drawn from (seed, stream, round, ...), so the state is only what
accumulates: the server's parameters, strategy and mechanism state (the stored noise of
correlated mechanisms included) and clip norm; the participation ledger and the simulated
clock; and the driver's per-round history. A resumed run therefore replays the remaining rounds
exactly and ends with the same `model_sha256` as an uninterrupted one.

The file, `checkpoint.npz`, is data, never code, so loading someone else's run directory cannot
run theirs: a NumPy archive (`numpy.savez`) of arrays of numeric or bool dtypes, read back with
`numpy.load(allow_pickle=False)`. Its member `structure` holds the UTF-8 JSON of the nested
state: dicts with string keys, lists (tuples become lists), None, bool, int of any size, float
(inf and nan included) and str, with each array in it replaced by a reference to its member:
`{"__array__": "a0"}` for a NumPy array, `{"__scalar__": "a1"}` for a NumPy scalar (a 0-d
member) and `{"__tensor__": "a2", "dtype": "float32"}` for a torch tensor (read back on the
CPU; a dtype NumPy lacks, like bfloat16, is stored as integers of its width). Anything else is
refused when saving. The archive is written to a temporary file, flushed to disk and renamed
over `checkpoint.npz`, so a kill at any moment leaves either the previous checkpoint or the new
one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from engine.plan import CLUSTER_SPEED_ONLY

FILE_NAME = "checkpoint.npz"
FORMAT = 2
_LEGACY_FILE_NAME = "checkpoint.pkl"  # format 1, a pickle: never loaded
_MAGIC = "fedray-checkpoint"
_STRUCTURE = "structure"
_ARRAY, _SCALAR, _TENSOR = "__array__", "__scalar__", "__tensor__"
_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex
_BITS = (torch.uint8, torch.int16, torch.int32, torch.int64)  # stand-ins by width
# Errors of reading a damaged or foreign archive (json.JSONDecodeError is a ValueError;
# RecursionError and NotImplementedError, of an unknown zip compression, RuntimeErrors).
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    RuntimeError,
    zipfile.BadZipFile,
)


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


_FIELDS = tuple(field.name for field in dataclasses.fields(Checkpoint))
# Sections that never change a run's results: how it was started and where its metrics go.
_NOT_DEFINING = ("resume", "tracking")


def run_defining(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides a run's results.

    All of it but `resume`, `tracking` and the cluster settings that change only speed
    (`CLUSTER_SPEED_ONLY`): a run may resume with more or fewer workers, or other tracking, but
    not with another chunk size, say, which changes the order of float sums.
    """
    defining = {key: value for key, value in config.items() if key not in _NOT_DEFINING}
    cluster = defining.get("cluster")
    if isinstance(cluster, dict):
        defining["cluster"] = {k: v for k, v in cluster.items() if k not in CLUSTER_SPEED_ONLY}
    return defining


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
    """Writes `checkpoint` atomically as `output_dir/checkpoint.npz`; returns its path.

    Raises:
        TypeError: If the checkpoint holds a value of a kind the format does not store, naming
            its path (e.g. `server.mechanism.buffers.0`).
    """
    arrays: dict[str, np.ndarray] = {}
    fields = {name: _encode(getattr(checkpoint, name), name, arrays) for name in _FIELDS}
    text = json.dumps({"format": _MAGIC, "version": FORMAT, "checkpoint": fields})
    arrays[_STRUCTURE] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    path = output_dir / FILE_NAME
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as stream:
        np.savez(stream, **cast(dict[str, Any], arrays))  # members: a0, a1, ..., structure
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    return path


def load(output_dir: Path) -> Checkpoint | None:
    """The checkpoint of `output_dir`, or None if it has none.

    Raises:
        ValueError: In one line, if the file is not a fedray checkpoint of this format (or is
            truncated or corrupt), or if the directory has only a pickled checkpoint of an
            earlier fedray.
    """
    path = output_dir / FILE_NAME
    if not path.is_file():
        legacy = output_dir / _LEGACY_FILE_NAME
        if legacy.is_file():
            raise ValueError(f"{legacy}: a pickled checkpoint of an earlier fedray (not loaded)")
        return None
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("not an archive")
        with archive:
            arrays = {name: archive[name] for name in archive.files}
        structure = arrays.pop(_STRUCTURE, None)
        if structure is None:
            raise ValueError(f"no member {_STRUCTURE!r}")
        if structure.dtype != np.uint8 or structure.ndim != 1:
            raise ValueError(f"a {_STRUCTURE} of dtype {structure.dtype}")
        content = json.loads(structure.tobytes().decode("utf-8"))
        if not isinstance(content, dict) or content.get("format") != _MAGIC:
            raise ValueError(f"no {_MAGIC} in {_STRUCTURE}")
        if content.get("version") != FORMAT:
            raise ValueError(f"of format {content.get('version')}, not {FORMAT}")
        fields = content.get("checkpoint")
        if not isinstance(fields, dict) or set(fields) != set(_FIELDS):
            raise ValueError(f"fields are not {sorted(_FIELDS)}")
        values = {name: _decode(value, arrays) for name, value in fields.items()}
        for name, value in values.items():
            expected = int if name == "rounds_done" else list if name == "history" else dict
            if type(value) is not expected:
                raise ValueError(f"{name} is a {type(value).__name__}")
    except _READ_ERRORS as error:
        raise ValueError(f"{path}: not a fedray checkpoint ({_one_line(error)})") from None
    return Checkpoint(**values)


def _one_line(error: BaseException) -> str:
    """The first line of `error`'s message, or its type's name."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _encode(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """`value` as JSON-able data, its arrays moved into `arrays` (see the module's docstring).

    Raises:
        TypeError: Naming `path` (extended to the bad value's), for a value of a kind not stored.
    """
    if isinstance(value, torch.Tensor):
        return _encode_tensor(value, path, arrays)
    if isinstance(value, np.ndarray | np.generic):
        if type(value) is not np.ndarray and not isinstance(value, np.generic):
            raise TypeError(f"checkpoint: {path}: a {type(value).__name__}, not a plain ndarray")
        array = np.asarray(value)
        if array.dtype.kind not in _NUMERIC_KINDS or array.dtype.fields is not None:
            raise TypeError(f"checkpoint: {path}: an array of dtype {array.dtype}, not numeric")
        return {_ARRAY if isinstance(value, np.ndarray) else _SCALAR: _member(array, arrays)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or key in (_ARRAY, _SCALAR, _TENSOR):
                raise TypeError(f"checkpoint: {path}: a dict key {key!r} (keys are other str)")
            out[key] = _encode(item, f"{path}.{key}", arrays)
        return out
    if isinstance(value, list | tuple):
        return [_encode(item, f"{path}[{i}]", arrays) for i, item in enumerate(value)]
    raise TypeError(f"checkpoint: {path}: cannot store a {type(value).__name__}")


def _encode_tensor(tensor: torch.Tensor, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """The reference to `tensor`'s (host) values, stored in `arrays` (bit for bit).

    Raises:
        TypeError: Naming `path`, for a sparse tensor or one of a dtype not stored.
    """
    if tensor.layout != torch.strided:
        raise TypeError(f"checkpoint: {path}: a tensor of layout {tensor.layout}, not strided")
    host = tensor.detach().cpu().resolve_conj().resolve_neg()
    dtype = str(host.dtype).removeprefix("torch.")
    try:
        array = host.numpy()
    except TypeError:  # no NumPy dtype (bfloat16, float8, ...): its bits
        bits = next((b for b in _BITS if b.itemsize == host.element_size()), None)
        if bits is None or host.dtype.is_complex:
            raise TypeError(f"checkpoint: {path}: a tensor of dtype {dtype}") from None
        array = host.view(bits).numpy()
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"checkpoint: {path}: a tensor of dtype {dtype}")
    return {_TENSOR: _member(array, arrays), "dtype": dtype}


def _member(array: np.ndarray, arrays: dict[str, np.ndarray]) -> str:
    """Adds `array` to `arrays` under a new name; returns the name."""
    name = f"a{len(arrays)}"
    arrays[name] = array
    return name


def _decode(node: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The value that `_encode` made `node` of, with its arrays taken from `arrays`.

    Raises:
        ValueError: If a reference is malformed or names no member of a numeric dtype.
    """
    if isinstance(node, list):
        return [_decode(item, arrays) for item in node]
    if not isinstance(node, dict):
        return node
    if _ARRAY in node or _SCALAR in node:
        (kind,) = node  # exactly one key
        array = _array(node[kind], arrays)
        if kind == _ARRAY:
            return array
        if array.ndim != 0:
            raise ValueError(f"a scalar of shape {array.shape}")
        return array[()]
    if _TENSOR in node:
        if set(node) != {_TENSOR, "dtype"}:
            raise ValueError(f"a malformed tensor reference {sorted(node)}")
        dtype = getattr(torch, str(node["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"a tensor of unknown dtype {node['dtype']!r}")
        tensor = torch.from_numpy(_array(node[_TENSOR], arrays))
        if tensor.dtype == dtype:
            return tensor
        if tensor.element_size() != dtype.itemsize or dtype.is_complex:
            raise ValueError(f"a tensor of dtype {dtype} stored as {tensor.dtype}")
        return tensor.view(dtype)
    return {key: _decode(item, arrays) for key, item in node.items()}


def _array(name: Any, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The member `name` of numeric dtype, writable (members are read into read-only memory).

    Raises:
        ValueError: If there is no such member, or it is not numeric.
    """
    array = arrays.get(name) if isinstance(name, str) else None
    if array is None or array.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"no numeric member {name!r}")
    return array if array.flags.writeable else array.copy()
