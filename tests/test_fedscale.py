"""FedScale-style traces: behaviour semantics against an independent loop, formats, units."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.errors import ConfigError
from engine.population import FedScaleAvailability, FedScaleDevices
from engine.population.fedscale import load_mapping
from engine.population.trace_files import resolve_path
from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_fedscale_trace.py"

# Keys inserted out of order: trace i is the i-th key in increasing order (3, 7, 11).
BEHAVIOUR: dict[int, dict[str, Any]] = {
    7: {"active": [100, 500], "inactive": [200, 600], "finish_time": 1000, "duration": 200},
    3: {"active": [0, 50], "inactive": [10, 50], "finish_time": 60, "model": "x"},
    11: {"active": [], "inactive": [], "finish_time": 10},
}


def reference(trace: dict[int, dict[str, Any]], n: int, t: float) -> list[bool]:
    """FedScale's rule, one client at a time: active[i] <= t % finish_time <= inactive[i]."""
    keys = sorted(trace)
    out = []
    for c in range(n):
        entry = trace[keys[c % len(keys)]]
        norm = t % entry["finish_time"]
        out.append(
            any(a <= norm <= b for a, b in zip(entry["active"], entry["inactive"], strict=True))
        )
    return out


def fedscale_stateful(entry: dict[str, Any], times: list[float]) -> list[bool]:
    """FedScale's own `is_active` walk (cached window index), for increasing query times."""
    index, out = 0, []
    for t in times:
        norm = t % entry["finish_time"]
        if norm > entry["inactive"][index]:
            index += 1
        index %= len(entry["active"])
        out.append(entry["active"][index] <= norm <= entry["inactive"][index])
    return out


def write(tmp_path: Path, name: str, mapping: dict[Any, Any]) -> str:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps({str(k): v for k, v in mapping.items()}))
    else:
        path.write_bytes(pickle.dumps(mapping))
    return str(path)


@pytest.fixture
def behaviour(tmp_path: Path) -> str:
    return write(tmp_path, "behave.json", BEHAVIOUR)


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        # clients 0, 3: key 3 (period 60); 1, 4: key 7 (period 1000); 2: key 11 (never)
        (0.0, [True, False, False, True, False]),
        (10.0, [True, False, False, True, False]),  # inactive is inclusive
        (10.5, [False, False, False, False, False]),
        (50.0, [True, False, False, True, False]),  # a zero-length window still counts
        (110.0, [True, True, False, True, True]),  # 110 mod 60 = 50 for key 3
        (200.0, [False, True, False, False, True]),
        (1150.0, [True, True, False, True, True]),  # 1150 mod 1000 = 150; mod 60 = 10
        (1160.0, [False, True, False, False, True]),
        (1600.0, [False, True, False, False, True]),
        (-900.0, [True, True, False, True, True]),  # floor modulo, like Python's %
    ],
)
def test_hand_trace(behaviour: str, t: float, expected: list[bool]) -> None:
    a = FedScaleAvailability(num_clients=5, path=behaviour)
    assert a.num_traces == 3
    np.testing.assert_array_equal(a.available(t), expected)
    assert expected == reference(BEHAVIOUR, 5, t)


def test_matches_independent_loop_on_shipped_trace() -> None:
    path = "fedray:fedscale_behaviour.json"
    trace = {int(k): v for k, v in json.loads(resolve_path(path).read_text()).items()}
    a = FedScaleAvailability(num_clients=450, path=path)
    edges = [float(x) for e in list(trace.values())[:5] for x in e["active"] + e["inactive"]]
    times = [*np.random.default_rng(0).uniform(0, 2e6, 40).tolist(), *edges]
    for t in times:
        np.testing.assert_array_equal(a.available(t), reference(trace, 450, t))


def test_agrees_with_fedscale_walk_for_dense_queries(behaviour: str) -> None:
    """Where FedScale's cached index cannot skip a window, its answers are ours."""
    entry = BEHAVIOUR[7]
    times = [float(t) for t in range(0, 1000, 5)]
    a = FedScaleAvailability(num_clients=3, path=behaviour)
    ours = [bool(a.available(t)[1]) for t in times]
    assert ours == fedscale_stateful(entry, times)


def test_pickle_and_json_agree(tmp_path: Path) -> None:
    as_json = FedScaleAvailability(num_clients=9, path=write(tmp_path, "b.json", BEHAVIOUR))
    as_pickle = FedScaleAvailability(num_clients=9, path=write(tmp_path, "b.pkl", BEHAVIOUR))
    # FedScale's own files have no suffix.
    bare = FedScaleAvailability(
        num_clients=9, path=write(tmp_path, "client_behave_trace", BEHAVIOUR)
    )
    for t in np.random.default_rng(0).uniform(0, 5000, 100):
        np.testing.assert_array_equal(as_json.available(t), as_pickle.available(t))
        np.testing.assert_array_equal(as_json.available(t), bare.available(t))


def test_contract(behaviour: str) -> None:
    a = FedScaleAvailability(num_clients=1000, path=behaviour)
    times = np.random.default_rng(0).uniform(0, 3000, 50)
    first = [a.available(t) for t in times]
    assert all(m.dtype == np.bool_ and m.shape == (1000,) for m in first)
    for i in np.random.default_rng(1).permutation(len(times)):
        np.testing.assert_array_equal(a.available(times[i]), first[i])
    assert not np.shares_memory(a.available(0.0), a.available(0.0))


def entry(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"active": [0, 20], "inactive": [10, 30], "finish_time": 40}
    return {**base, **changes}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (entry(inactive=[10]), "2 active times but 1 inactive times"),
        (entry(active=[20, 0], inactive=[30, 10]), "times go back: 30.0 then 0.0"),
        (entry(active=[0, 5]), "times go back: 10.0 then 5.0"),
        (entry(active=[5, 20], inactive=[4, 30]), "times go back: 5.0 then 4.0"),
        (entry(active=[-5, 20]), "negative time -5.0"),
        (entry(finish_time=0), "finish_time 0.0 <= 0"),
        (entry(finish_time="x"), "finish_time 'x' is not a number"),
        (entry(active=[0, "a"]), "active has a non-numeric time"),
        (entry(active=None), "'active' must be a list of times"),
        ({"active": [], "inactive": []}, "missing 'finish_time'"),
        ([1, 2], "expected a dict, got list"),
    ],
)
def test_malformed_behaviour_names_file_and_key(tmp_path: Path, bad: Any, reason: str) -> None:
    path = write(tmp_path, "b.pkl", {1: entry(), 42: bad})
    with pytest.raises(ConfigError) as err:
        FedScaleAvailability(num_clients=4, path=path)
    assert err.value.key == "path"
    assert err.value.reason.startswith(f"{path}:client 42: ")
    assert reason in err.value.reason
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x80\x04garbage", "not a pickle file"),
        (b"{not json", "not a JSON file"),
        (pickle.dumps([1, 2]), "expected a dict keyed by client id, got list"),
        (pickle.dumps({}), "no clients"),
        (pickle.dumps({"a": entry()}), "client 'a': key is not an integer"),
        (pickle.dumps({1.5: entry()}), "client 1.5: key is not an integer"),
        (pickle.dumps({1: entry(), "1": entry()}), "client '1': duplicate key"),
    ],
)
def test_malformed_files(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "trace"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        FedScaleAvailability(num_clients=4, path=str(path))
    assert reason in err.value.reason
    assert err.value.reason.startswith(f"{path}:")
    assert "\n" not in str(err.value)


def test_keys_sort_numerically(tmp_path: Path) -> None:
    keys = [key for key, _ in load_mapping(write(tmp_path, "c.json", {10: 0, 9: 0, 100: 0}))]
    assert keys == [9, 10, 100]


CAPACITY = {
    5: {"computation": 100.0, "communication": 8000.0},
    2: {"computation": 20.0, "communication": 800.0},
}


@pytest.mark.parametrize("name", ["cap.json", "cap.pkl"])
def test_device_units(tmp_path: Path, name: str) -> None:
    devices = FedScaleDevices(path=write(tmp_path, name, CAPACITY))
    assert devices.num_entries == 2
    ids = np.array([0, 1, 2, 3, 10**9 + 1])
    # Entry order is key order (2, 5): ms/sample -> s, kbit/s -> bytes/s.
    np.testing.assert_allclose(devices.seconds_per_example(ids), [0.02, 0.1, 0.02, 0.1, 0.1])
    np.testing.assert_allclose(devices.bandwidth(ids), [1e5, 1e6, 1e5, 1e6, 1e6])
    assert devices.seconds_per_example(ids).dtype == np.float64
    tripled = FedScaleDevices(path=write(tmp_path, name, CAPACITY), compute_factor=3.0)
    np.testing.assert_allclose(tripled.seconds_per_example(ids[:2]), [0.06, 0.3])


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"computation": 0.0, "communication": 1.0}, "computation 0.0 <= 0"),
        ({"computation": 1.0, "communication": -3}, "communication -3.0 <= 0"),
        ({"computation": 1.0}, "missing 'communication'"),
        ({"computation": float("nan"), "communication": 1.0}, "computation nan is not finite"),
    ],
)
def test_malformed_capacity(tmp_path: Path, bad: dict[str, float], reason: str) -> None:
    path = write(tmp_path, "cap.pkl", {**CAPACITY, 9: bad})
    with pytest.raises(ConfigError) as err:
        FedScaleDevices(path=path)
    assert err.value.reason == f"{path}:client 9: {reason}"


def test_rejects_bad_fields(behaviour: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="num_clients"):
        FedScaleAvailability(num_clients=0, path=behaviour)
    with pytest.raises(ConfigError, match="compute_factor"):
        FedScaleDevices(path=write(tmp_path, "cap.json", CAPACITY), compute_factor=0.0)
    with pytest.raises(ConfigError, match="no such file"):
        FedScaleDevices(path="fedray:missing.json")


def test_shipped_files() -> None:
    a = FedScaleAvailability(num_clients=100_000, path="fedray:fedscale_behaviour.json")
    assert a.num_traces == 200
    fractions = np.array([a.available(float(t)).mean() for t in np.arange(0, 7 * 86_400, 3600)])
    assert 0.02 < fractions.min() < fractions.max() < 0.8
    assert 0.1 < fractions.mean() < 0.5
    devices = FedScaleDevices(path="fedray:fedscale_capacity.json")
    assert devices.num_entries == 200
    seconds = devices.seconds_per_example(np.arange(200))
    rate = devices.bandwidth(np.arange(200))
    assert (seconds > 0).all() and 0.01 < np.median(seconds) < 0.5
    assert (rate > 0).all() and 1e4 < np.median(rate) < 1e7
    folder = resolve_path("fedray:fedscale_behaviour.json").parent
    assert sum(p.stat().st_size for p in folder.iterdir()) < 150_000


def test_generator_reproduces_shipped_files(tmp_path: Path) -> None:
    load_script(SCRIPT).main(["--out-dir", str(tmp_path)])
    shipped = resolve_path("fedray:fedscale_behaviour.json").parent
    names = ["fedscale_behaviour.json", "fedscale_capacity.json", "diurnal_intervals.csv"]
    for name in names:
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
