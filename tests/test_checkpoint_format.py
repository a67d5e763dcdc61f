"""The checkpoint file is data, never code: what it stores comes back exactly, nothing runs."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.app.checkpoint import FILE_NAME, FORMAT, Checkpoint, load, save


class _Payload:
    """Pickles as a call that leaves a file behind: loading it would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _checkpoint(**server: Any) -> Checkpoint:
    return Checkpoint(5, {"seed": 0}, server, {"now_s": 1.5}, [{"round": 0}], {}, {})


def _same(a: Any, b: Any) -> None:
    """Equal values of the same types (arrays and tensors: dtype, shape and bits)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and b.device.type == "cpu"
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray | np.generic):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


STATE: dict[str, Any] = {
    "params": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7,
    "strategy": {"m": torch.zeros(3, dtype=torch.float64), "step": torch.tensor(3)},
    "mechanism": {
        "round": 4,
        "seed": 2**127 + 5,  # a 128-bit secret seed
        "negative": -(2**70),
        "efficient": True,
        "restart_every": None,
        "buffers": {"0": torch.randn(4), "2": torch.randn(4)},  # the tree's string levels
        "ring": None,
    },
    "blt": {"buffers": None, "num_buffers": 3},
    "clip_norm": 0.1 + 0.2,
    "special": [math.inf, -math.inf, math.nan, -0.0, 1e-310],
    "text": 'é \u2603 "quoted" \\',
    "nested": [[1, [2, {"x": []}]], {}],
    "half": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
    "float16": torch.tensor([0.1], dtype=torch.float16),
    "flags": torch.tensor([True, False]),
    "complex": torch.tensor([1 + 2j], dtype=torch.complex64),
    "scalar_tensor": torch.tensor(2.5),
    "empty": torch.zeros(0, 3),
    "ledger": {
        "count": np.arange(5, dtype=np.int32),
        "starts": np.array([0.0, np.inf, -np.inf]),
        "mask": np.array([[True], [False]]),
        "unsigned": np.array([2**64 - 1], dtype=np.uint64),
        "zero_d": np.array(7, dtype=np.int16),
        "complex": np.array([1 - 1j], dtype=np.complex128),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    },
    "numpy_scalars": [np.float32(0.1), np.int64(-3), np.bool_(True), np.float64(2.0)],
}


def test_every_kind_of_value_round_trips_exactly(tmp_path):
    checkpoint = _checkpoint(**STATE)
    save(checkpoint, tmp_path)
    loaded = load(tmp_path)
    assert loaded is not None
    _same(loaded.server, STATE)
    _same(loaded.config, checkpoint.config)
    assert loaded.rounds_done == 5 and loaded.history == [{"round": 0}]
    assert loaded.server["mechanism"]["seed"] == 2**127 + 5
    assert loaded.server["ledger"]["fortran"].flags.writeable  # usable as the saved ones


def test_tuples_come_back_as_lists(tmp_path):
    save(_checkpoint(shape=(1, (2, 3))), tmp_path)
    loaded = load(tmp_path)
    assert loaded is not None and loaded.server["shape"] == [1, [2, 3]]


def test_a_checkpoint_holds_no_pickle(tmp_path):
    path = save(_checkpoint(**STATE), tmp_path)
    with np.load(path, allow_pickle=False) as archive:
        for name in archive.files:
            assert archive[name].dtype.kind in "biufc", name  # loads, and is plain numbers
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert sorted(names) == sorted([*(f"a{i}.npy" for i in range(len(names) - 1)), "structure.npy"])
    structure = json.loads(np.load(path)["structure"].tobytes())
    assert structure["format"] == "fedray-checkpoint" and structure["version"] == FORMAT
    assert structure["checkpoint"]["server"]["params"] == {"__tensor__": "a0", "dtype": "float32"}


@pytest.mark.parametrize("where", ["member", "structure"])
def test_a_crafted_pickle_is_refused_not_run(tmp_path, where):
    marker = tmp_path / "pwned"
    payload = np.array([_Payload(marker)], dtype=object)
    path = save(_checkpoint(params=torch.zeros(2)), tmp_path)
    with np.load(path) as archive:
        members = {name: archive[name] for name in archive.files}
    members["a0" if where == "member" else "structure"] = payload
    with path.open("wb") as stream:
        np.savez(stream, **members)  # pickles the object array
    with pytest.raises(ValueError, match=r"not a fedray checkpoint \(.*pickle") as info:
        load(tmp_path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_a_whole_pickle_is_refused_not_run(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    (tmp_path / FILE_NAME).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="not a fedray checkpoint"):
        load(tmp_path)
    assert not marker.exists()


def _rewritten(path: Path, change: Any) -> None:
    """Rewrites the archive at `path` with its structure passed through `change`."""
    with np.load(path) as archive:
        members = {name: archive[name] for name in archive.files}
    structure = change(json.loads(members["structure"].tobytes()))
    text = structure if isinstance(structure, bytes) else json.dumps(structure).encode()
    members["structure"] = np.frombuffer(text, dtype=np.uint8)
    with path.open("wb") as stream:
        np.savez(stream, **members)


def _retensored(structure: dict[str, Any]) -> dict[str, Any]:
    structure["checkpoint"]["server"]["params"]["__tensor__"] = "nowhere"
    return structure


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: {**s, "version": FORMAT + 1}, f"of format {FORMAT + 1}, not {FORMAT}"),
        (lambda s: {**s, "format": "other"}, "no fedray-checkpoint"),
        (lambda s: b"{not json", "Expecting"),
        (lambda s: {**s, "checkpoint": {"rounds_done": 1}}, "fields are not"),
        (_retensored, "no numeric member 'nowhere'"),
    ],
)
def test_a_foreign_or_other_format_file_is_a_one_line_value_error(tmp_path, change, message):
    path = save(_checkpoint(params=torch.zeros(2)), tmp_path)
    _rewritten(path, change)
    with pytest.raises(ValueError, match="not a fedray checkpoint") as info:
        load(tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.6, 0.95])
def test_a_truncated_file_is_a_one_line_value_error(tmp_path, keep):
    path = save(_checkpoint(**STATE), tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="not a fedray checkpoint") as info:
        load(tmp_path)
    assert "\n" not in str(info.value)


def test_a_corrupt_member_is_a_value_error(tmp_path):
    path = save(_checkpoint(params=torch.arange(1000, dtype=torch.float32)), tmp_path)
    data = bytearray(path.read_bytes())
    data[400] ^= 0xFF  # inside a0's values: the zip's CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a fedray checkpoint"):
        load(tmp_path)


def test_other_files_are_value_errors(tmp_path):
    path = tmp_path / FILE_NAME
    for content in (b"", b"garbage", _npy(np.arange(3))):
        path.write_bytes(content)
        with pytest.raises(ValueError, match="not a fedray checkpoint"):
            load(tmp_path)


def _npy(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array)
    return stream.getvalue()


def test_an_earlier_pickled_checkpoint_is_named_not_loaded(tmp_path):
    (tmp_path / "checkpoint.pkl").write_bytes(b"\x80\x05N.")
    with pytest.raises(ValueError, match=r"checkpoint.pkl: a pickled checkpoint of an earlier"):
        load(tmp_path)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"ok": [1, {"bad": object()}]}, r"server\.x\.ok\[1\]\.bad: cannot store a object"),
        ({1: "int key"}, r"server\.x: a dict key 1"),
        ({"__array__": "a0"}, r"server\.x: a dict key '__array__'"),
        (np.array(["text"]), r"server\.x: an array of dtype <U4"),
        (np.array([None], dtype=object), r"server\.x: an array of dtype object"),
        (np.ma.masked_array([1, 2]), r"server\.x: a MaskedArray"),
        (b"bytes", r"server\.x: cannot store a bytes"),
        ({1, 2}, r"server\.x: cannot store a set"),
        (torch.zeros(2).to_sparse(), r"server\.x: a tensor of layout"),
    ],
)
def test_anything_else_is_refused_when_saving_naming_its_path(tmp_path, value, path):
    with pytest.raises(TypeError, match=rf"^checkpoint: {path}"):
        save(_checkpoint(x=value), tmp_path)
    assert not (tmp_path / FILE_NAME).exists()


def test_a_refused_save_leaves_the_previous_checkpoint(tmp_path):
    save(_checkpoint(params=torch.ones(2)), tmp_path)
    with pytest.raises(TypeError):
        save(_checkpoint(params=object()), tmp_path)
    loaded = load(tmp_path)
    assert loaded is not None and torch.equal(loaded.server["params"], torch.ones(2))
