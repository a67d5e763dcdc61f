"""A disk cache of optimised noise factorisations: one small JSON file per key.

Optimising a factorisation (a banded or BLT one) takes seconds, and its result is a pure
function of a few integers, so it is computed once per machine and then read back. The cache
directory is `$FEDRAY_CACHE_DIR` if set, else `~/.cache/fedray/factorisations`, read at each
call. Files are written atomically (a temporary file, then a rename); a missing, corrupt or
mismatched file is recomputed and rewritten, and an unwritable directory only costs the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

CACHE_ENV = "FEDRAY_CACHE_DIR"

Key = Mapping[str, int | str]
Params = dict[str, list[float]]


def cache_dir() -> Path:
    """The cache directory: `$FEDRAY_CACHE_DIR`, else `~/.cache/fedray/factorisations`."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "fedray" / "factorisations"


def cache_path(key: Key) -> Path:
    """The file of `key`, e.g. `blt-n2000-k6-b314-buffers3-blt-lbfgs-1-<hash of the key>.json`."""
    canonical = json.dumps(dict(key), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    parts = (v if isinstance(v, str) else f"{k}{v}" for k, v in key.items())
    readable = "-".join(re.sub(r"[^A-Za-z0-9_.-]", "_", part) for part in parts)
    return cache_dir() / f"{readable[:120]}-{digest}.json"


def _clean(params: Mapping[str, object]) -> Params:
    """`params` as lists of finite Python floats.

    Raises:
        ValueError: If a value is not a sequence of finite reals.
        TypeError: If a value is not iterable or holds non-numbers.
    """
    clean: Params = {}
    for name, values in params.items():
        if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
            raise TypeError(f"{name} is not a sequence of numbers")
        floats = [float(v) for v in values]
        if not all(math.isfinite(v) for v in floats):
            raise ValueError(f"{name} has non-finite values")
        clean[str(name)] = floats
    return clean


def _read(path: Path, key: Key) -> Params | None:
    """The parameters stored for `key` at `path`, or None if absent, corrupt or of another key."""
    try:
        with path.open(encoding="utf-8") as file:
            stored = json.load(file)
        if not isinstance(stored, dict) or stored.get("key") != dict(key):
            return None
        return _clean(stored["params"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _write(path: Path, key: Key, params: Params) -> None:
    """Writes atomically: readers see either the old file or the whole new one."""
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump({"key": dict(key), "params": params}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as error:
        warnings.warn(f"factorisation cache not written ({path}): {error}", stacklevel=3)
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


def cached_factorisation(key: Key, compute: Callable[[], Mapping[str, object]]) -> Params:
    """Returns the parameters of `key` from the cache, computing and storing them on a miss.

    Args:
        key: What the parameters are a pure function of: the kind of factorisation, its sizes and
            a version string of the optimiser (str or int values; the order names the file).
        compute: Computes the parameters: a mapping of names to sequences of finite reals.

    Returns:
        The parameters as lists of Python floats. A hit returns exactly what the miss returned
        (JSON writes floats in round-trip precision).
    """
    path = cache_path(key)
    params = _read(path, key)
    if params is None:
        params = _clean(compute())
        _write(path, key, params)
    return params
