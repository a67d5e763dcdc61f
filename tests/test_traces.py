"""Interval-trace replay: exact masks, CSV = Parquet, one-line file errors, the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from engine.population import IntervalTraceAvailability
from engine.population.trace_files import resolve_path
from engine.population.traces import cycle_to

# Trace client 0: [10, 20) and [30, 40); client 1: no intervals; client 2: [0, 5). M = 3.
HAND = [(0, 10.0, 20.0), (2, 0.0, 5.0), (0, 30.0, 40.0)]


def write_csv(
    path: Path, rows: list[tuple[int, float, float]], header: str = "client_id,start,end"
) -> str:
    path.write_text(header + "\n" + "".join(f"{c},{s},{e}\n" for c, s, e in rows))
    return str(path)


def write_parquet(path: Path, rows: list[tuple[int, float, float]]) -> str:
    clients, starts, ends = zip(*rows, strict=True) if rows else ((), (), ())
    table = pa.table(
        {
            "end": pa.array(ends, pa.float64()),
            "client_id": pa.array(clients, pa.int64()),
            "start": pa.array(starts, pa.float64()),
        }
    )
    pq.write_table(table, path)
    return str(path)


def mask(*on: int, n: int = 7) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[list(on)] = True
    return out


@pytest.fixture
def hand(tmp_path: Path) -> str:
    return write_csv(tmp_path / "hand.csv", HAND)


@pytest.mark.parametrize(
    ("t", "on"),
    [
        (-1.0, ()),
        (0.0, (2, 5)),  # start inclusive
        (4.999, (2, 5)),
        (5.0, ()),  # end exclusive
        (9.999, ()),
        (10.0, (0, 3, 6)),
        (19.999, (0, 3, 6)),
        (20.0, ()),
        (30.0, (0, 3, 6)),
        (40.0, ()),
        (1e9, ()),
    ],
)
def test_replays_hand_trace_once(hand: str, t: float, on: tuple[int, ...]) -> None:
    availability = IntervalTraceAvailability(num_clients=7, path=hand)
    assert availability.num_trace_clients == 3
    np.testing.assert_array_equal(availability.available(t), mask(*on))


@pytest.mark.parametrize(
    ("t", "on"),
    [
        (50.0, (2, 5)),
        (55.0, ()),
        (60.0, (0, 3, 6)),
        (89.999, (0, 3, 6)),
        (90.0, ()),
        (1000.0 + 4.0, (2, 5)),
        (-40.0, (0, 3, 6)),  # -40 mod 50 = 10
        (-45.0, ()),
    ],
)
def test_replays_hand_trace_with_period(hand: str, t: float, on: tuple[int, ...]) -> None:
    availability = IntervalTraceAvailability(num_clients=7, path=hand, period_s=50.0)
    np.testing.assert_array_equal(availability.available(t), mask(*on))


def test_population_smaller_than_trace(hand: str) -> None:
    availability = IntervalTraceAvailability(num_clients=2, path=hand)
    np.testing.assert_array_equal(availability.available(10.0), [True, False])
    np.testing.assert_array_equal(availability.available(0.0), [False, False])


def test_interval_past_period_names_the_line(hand: str) -> None:
    with pytest.raises(ConfigError) as err:
        IntervalTraceAvailability(num_clients=7, path=hand, period_s=35.0)
    assert f"{hand}:4:" in err.value.reason
    assert "period_s" in err.value.reason


def test_rejects_bad_fields(hand: str) -> None:
    with pytest.raises(ConfigError, match="num_clients"):
        IntervalTraceAvailability(num_clients=0, path=hand)
    with pytest.raises(ConfigError, match="period_s"):
        IntervalTraceAvailability(num_clients=3, path=hand, period_s=0.0)


def test_csv_and_parquet_give_identical_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for client in range(40):
        points = np.sort(rng.choice(10_000, size=2 * int(rng.integers(0, 6)), replace=False))
        rows += [(client, float(s), float(e)) for s, e in points.reshape(-1, 2)]
    rows.sort(key=lambda r: r[1])  # clients interleaved, each in start order
    csv_path = write_csv(tmp_path / "t.csv", rows, header="client_id,start,end")
    pq_path = write_parquet(tmp_path / "t.parquet", rows)
    from_csv = IntervalTraceAvailability(num_clients=1000, path=csv_path, period_s=10_000.0)
    from_pq = IntervalTraceAvailability(num_clients=1000, path=pq_path, period_s=10_000.0)
    assert from_csv.num_trace_clients == from_pq.num_trace_clients
    for t in rng.uniform(-1e4, 3e4, 200):
        np.testing.assert_array_equal(from_csv.available(t), from_pq.available(t))


def test_csv_columns_in_any_order_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("end,note,client_id,start\n20,x,0,10\n5,y,2,0\n40,z,0,30\n")
    a = IntervalTraceAvailability(num_clients=7, path=str(path))
    np.testing.assert_array_equal(a.available(10.0), mask(0, 3, 6))
    np.testing.assert_array_equal(a.available(0.0), mask(2, 5))


BAD_CSV = [
    ("client_id,start\n0,1\n", 1, "missing column(s) end"),
    ("client_id,start,end\n0,1,2\n0,abc,5\n", 3, "start 'abc' is not a number"),
    ("client_id,start,end\n1.5,1,2\n", 2, "client_id '1.5' is not an integer"),
    ("client_id,start,end\nx,1,2\n", 2, "client_id 'x' is not an integer"),
    ("client_id,start,end\n0,nan,2\n", 2, "not a finite number"),
    ("client_id,start,end\n0,-1,5\n", 2, "start -1.0 < 0"),
    ("client_id,start,end\n0,1,2\n0,3,-5\n", 3, "end -5.0 < 0"),
    ("client_id,start,end\n0,1,2\n\n0,12,10\n", 4, "end 10.0 <= start 12.0"),
    ("client_id,start,end\n0,5,5\n", 2, "end 5.0 <= start 5.0"),
    ("client_id,start,end\n0,10,20\n1,0,3\n0,0,5\n", 4, "not sorted by start the one at 2"),
    ("client_id,start,end\n0,0,10\n1,0,3\n0,5,15\n", 4, "overlaps the one at 2"),
    ("client_id,start,end\n-1,0,5\n", 2, "client_id -1 < 0"),
    ("client_id,start,end\n0,0,5,9\n", 2, "4 fields, header has 3"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD_CSV)
def test_malformed_csv_names_file_and_line(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        IntervalTraceAvailability(num_clients=4, path=str(path))
    assert err.value.key == "path"
    assert err.value.reason.startswith(f"{path}:{line}: ")
    assert reason in err.value.reason
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "reason"), [("", "empty file"), ("client_id,start,end\n", "no intervals")]
)
def test_empty_csv(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=reason):
        IntervalTraceAvailability(num_clients=4, path=str(path))


def test_malformed_parquet_names_file_and_row(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", [(0, 0.0, 5.0), (0, 6.0, -1.0)])
    with pytest.raises(ConfigError) as err:
        IntervalTraceAvailability(num_clients=4, path=path)
    assert err.value.reason.startswith(f"{path}:row 1: end -1.0 < 0")

    pq.write_table(pa.table({"client_id": [0, 1], "start": [0.0, None], "end": [1.0, 2.0]}), path)
    with pytest.raises(ConfigError, match=r":row 1: start is null"):
        IntervalTraceAvailability(num_clients=4, path=path)

    pq.write_table(pa.table({"client_id": [0, 1], "start": ["0", "x"], "end": [1.0, 2.0]}), path)
    with pytest.raises(ConfigError, match=r":row 1: start 'x' is not a number"):
        IntervalTraceAvailability(num_clients=4, path=path)

    pq.write_table(
        pa.table({"client_id": [0.0, 1.5], "start": [0.0, 1.0], "end": [1.0, 2.0]}), path
    )
    with pytest.raises(ConfigError, match=r":row 1: client_id 1.5 is not an integer"):
        IntervalTraceAvailability(num_clients=4, path=path)

    pq.write_table(pa.table({"client_id": [0], "begin": [0.0], "end": [1.0]}), path)
    with pytest.raises(ConfigError, match=r"t.parquet: missing column\(s\) start"):
        IntervalTraceAvailability(num_clients=4, path=path)

    Path(path).write_text("not parquet")
    with pytest.raises(ConfigError, match="not a Parquet file"):
        IntervalTraceAvailability(num_clients=4, path=path)


def test_resolve_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = resolve_path("fedray:diurnal_intervals.csv")
    assert shipped.is_file()
    assert shipped.parent.name == "traces_data"
    with pytest.raises(ConfigError) as err:
        resolve_path("fedray:nope.csv")
    assert (err.value.key, err.value.reason) == ("path", "fedray:nope.csv: no such file")
    write_csv(tmp_path / "rel.csv", HAND)
    monkeypatch.chdir(tmp_path)
    assert resolve_path("rel.csv") == Path("rel.csv")
    with pytest.raises(ConfigError, match=r"missing\.csv: no such file"):
        IntervalTraceAvailability(num_clients=3, path="missing.csv")


def test_shipped_interval_trace() -> None:
    a = IntervalTraceAvailability(
        num_clients=10_000, path="fedray:diurnal_intervals.csv", period_s=86_400
    )
    fractions = np.array([a.available(float(t)).mean() for t in np.arange(0, 86_400, 3600)])
    assert 0.02 < fractions.min() < fractions.max() < 0.8


def test_contract(hand: str) -> None:
    a = IntervalTraceAvailability(num_clients=1001, path=hand, period_s=50.0)
    times = np.random.default_rng(0).uniform(-100, 200, 60)
    first = [a.available(t) for t in times]
    for out in first:
        assert out.dtype == np.bool_ and out.shape == (1001,)
    order = np.random.default_rng(1).permutation(len(times))
    for i in order:
        np.testing.assert_array_equal(a.available(times[i]), first[i])
    one, two = a.available(10.0), a.available(10.0)
    assert not np.shares_memory(one, two)
    one[:] = False
    assert a.available(10.0)[0]


@pytest.mark.parametrize("m", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("n", [1, 5, 64, 1000, 1001])
def test_cycle_to(m: int, n: int) -> None:
    values = np.arange(m) * 3
    np.testing.assert_array_equal(cycle_to(values, n), values[np.arange(n) % m])


@st.composite
def traces(draw: st.DrawFn) -> tuple[list[tuple[int, float, float]], float | None]:
    rows = []
    for client in range(draw(st.integers(1, 6))):
        points = draw(st.lists(st.integers(0, 60), max_size=8, unique=True))
        points = sorted(points)[: len(points) // 2 * 2]
        rows += [
            (client, float(s), float(e)) for s, e in zip(points[::2], points[1::2], strict=True)
        ]
    if not rows:
        rows = [(0, 1.0, 2.0)]
    period = draw(st.sampled_from([None, 60.0, 61.5]))
    return rows, period


@settings(max_examples=60, deadline=None)
@given(
    trace=traces(),
    n=st.integers(1, 20),
    times=st.lists(st.floats(-200, 200), min_size=1, max_size=8),
)
def test_matches_brute_force(
    tmp_path_factory: pytest.TempPathFactory,
    trace: tuple[list[tuple[int, float, float]], float | None],
    n: int,
    times: list[float],
) -> None:
    rows, period = trace
    path = write_csv(tmp_path_factory.mktemp("h") / "t.csv", rows)
    a = IntervalTraceAvailability(num_clients=n, path=path, period_s=period)
    m = max(c for c, _, _ in rows) + 1
    for t in [*times, *(s for _, s, _ in rows), *(e for _, _, e in rows)]:
        tt = t if period is None else t % period
        expected = [any(c == k % m and s <= tt < e for c, s, e in rows) for k in range(n)]
        np.testing.assert_array_equal(a.available(t), expected)
