"""engine/scheduling/ledger.py: the participation ledger, its observed bound and its Parquet log."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.scheduling import ParticipationLedger, read_log
from mechanisms.participation import ObservedParticipation

# A hand-built history over 6 clients, and what it shows (worked out by hand):
#   round 0: 0 1 2      client 0: rounds 0, 3     -> 2 times, gap 3
#   round 1: 2 3        client 1: round 0         -> 1 time
#   round 2: (nobody)   client 2: rounds 0, 1, 3  -> 3 times, gaps 1, 2
#   round 3: 0 2        client 3: round 1         -> 1 time
#   round 4: 5          client 4: never
#                       client 5: round 4         -> 1 time
HISTORY = [[0, 1, 2], [2, 3], [], [0, 2], [5]]
STARTS = [0.0, 10.5, 20.0, 30.0, 45.0]


def _ids(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _ledger(history=HISTORY, starts=STARTS, num_clients=6, **kwargs) -> ParticipationLedger:
    ledger = ParticipationLedger(num_clients, **kwargs)
    for r, (ids, start) in enumerate(zip(history, starts, strict=True)):
        ledger.record(r, start, np.array(ids, dtype=np.int64))
    return ledger


def test_counters_of_a_hand_built_history():
    ledger = _ledger()
    assert ledger.rounds_recorded == 5
    assert ledger.count.tolist() == [2, 1, 3, 1, 0, 1]
    assert ledger.last_round.tolist() == [3, 0, 3, 1, -1, 4]
    gaps = ledger.min_gap.tolist()
    assert gaps[0] == 3
    assert gaps[2] == 1
    assert all(gaps[c] == np.iinfo(np.int32).max for c in (1, 3, 4, 5))


def test_observed_of_a_hand_built_history():
    assert _ledger().observed() == ObservedParticipation(
        max_participations=3, min_separation=1, clients=5, contributions=8
    )


@pytest.mark.parametrize(
    ("k", "b", "holds"),
    [
        (3, 1, True),
        (None, 1, True),
        (100, 1, True),
        (2, 1, False),  # client 2 joined 3 times
        (None, 2, False),  # client 2 joined rounds 0 and 1
        (3, 2, False),
    ],
)
def test_check_of_a_hand_built_history(k, b, holds):
    assert _ledger().check(k, b) is holds


def test_observed_separation_is_the_smallest_gap_of_any_client():
    # Client 0 joins every 3rd round, client 1 every 2nd from round 1: gaps 3, 3 and 2, 2.
    history = [[0], [1], [], [0, 1], [], [1], [0]]
    ledger = _ledger(history, [0.0] * len(history), num_clients=2)
    assert ledger.observed() == ObservedParticipation(3, 2, 2, 6)
    assert ledger.check(3, 2)
    assert not ledger.check(3, 3)
    assert not ledger.check(2, 2)


def test_empty_ledger():
    for num_clients in (0, 1, 10):
        ledger = ParticipationLedger(num_clients)
        assert ledger.rounds_recorded == 0
        assert ledger.observed() == ObservedParticipation(0, None, 0, 0)
        assert ledger.check(1, 1_000_000)


def test_rounds_with_nobody_count_as_rounds():
    ledger = _ledger([[], [], [1]], [0.0, 1.0, 2.0], num_clients=3)
    assert ledger.rounds_recorded == 3
    assert ledger.observed() == ObservedParticipation(1, None, 1, 1)
    np.testing.assert_array_equal(ledger.last_start_s(np.arange(3)), [-np.inf, 2.0, -np.inf])


def test_record_accepts_other_int_dtypes_and_any_order():
    ledger = ParticipationLedger(5)
    ledger.record(0, 0.0, np.array([4, 1], dtype=np.uint16))
    ledger.record(1, 1.0, np.array([1, 2], dtype=np.int32))
    assert ledger.count.tolist() == [0, 2, 1, 0, 1]
    assert ledger.observed().min_separation == 1


def test_memory_is_twelve_bytes_per_client():
    ledger = ParticipationLedger(1000)
    arrays = (ledger.count, ledger.last_round, ledger.min_gap)
    assert all(a.dtype == np.int32 for a in arrays)
    assert sum(a.nbytes for a in arrays) == 12 * 1000


# -- last_start_s ------------------------------------------------------------------------------


def test_last_start_s():
    ledger = _ledger()
    np.testing.assert_array_equal(
        ledger.last_start_s(np.arange(6)), [30.0, 0.0, 30.0, 10.5, -np.inf, 45.0]
    )
    np.testing.assert_array_equal(ledger.last_start_s(slice(1, 6, 2)), [0.0, 10.5, 45.0])
    np.testing.assert_array_equal(
        ledger.last_start_s(np.array([4, 4, 0])), [-np.inf, -np.inf, 30.0]
    )


def test_last_start_s_follows_new_rounds():
    ledger = ParticipationLedger(3)
    np.testing.assert_array_equal(ledger.last_start_s(np.arange(3)), [-np.inf] * 3)
    ledger.record(0, 5.0, _ids([1]))
    np.testing.assert_array_equal(ledger.last_start_s(np.arange(3)), [-np.inf, 5.0, -np.inf])
    ledger.record(1, 7.0, _ids([]))
    ledger.record(2, 9.0, _ids([1, 2]))
    np.testing.assert_array_equal(ledger.last_start_s(np.arange(3)), [-np.inf, 9.0, 9.0])


# -- errors ------------------------------------------------------------------------------------


def _state(ledger: ParticipationLedger) -> tuple:
    return (
        ledger.rounds_recorded,
        ledger.count.tolist(),
        ledger.last_round.tolist(),
        ledger.min_gap.tolist(),
        ledger.last_start_s(np.arange(len(ledger.count))).tolist(),
    )


@pytest.mark.parametrize("round_idx", [0, 1, 3, 6, 7, -1])
def test_record_rejects_rounds_out_of_order(round_idx):
    ledger = _ledger()
    before = _state(ledger)
    with pytest.raises(ValueError, match="out of order"):
        ledger.record(round_idx, 100.0, _ids([4]))
    assert _state(ledger) == before
    ledger.record(5, 100.0, _ids([4]))  # the right round still commits
    assert ledger.count[4] == 1


@pytest.mark.parametrize("ids", [[1, 1], [0, 3, 2, 3], [5, 5, 5]])
def test_record_rejects_a_client_twice_in_a_round(ids):
    ledger = _ledger()
    before = _state(ledger)
    with pytest.raises(ValueError, match="twice"):
        ledger.record(5, 100.0, _ids(ids))
    assert _state(ledger) == before
    ledger.record(5, 100.0, _ids(sorted(set(ids))))
    assert ledger.rounds_recorded == 6


# -- Parquet log -------------------------------------------------------------------------------


def test_log_round_trips_through_read_log(tmp_path):
    # 15 rounds of 10,000 ids: 150,000 rows, more than two 65,536-row buffers.
    rng = np.random.default_rng(0)
    num_clients = 50_000
    path = tmp_path / "nested" / "dir" / "ledger.parquet"  # parents are created
    ledger = ParticipationLedger(num_clients, log_path=path)
    history = []
    for r in range(15):
        ids = np.sort(rng.choice(num_clients, size=10_000, replace=False)).astype(np.int64)
        ledger.record(r, 60.0 * r, ids)
        history.append(ids)
    ledger.record(15, 900.0, np.empty(0, dtype=np.int64))  # a round with nobody
    ledger.close()
    ledger.close()  # idempotent
    rounds, ids = read_log(path)
    assert rounds.dtype == np.int32
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, np.concatenate(history))
    np.testing.assert_array_equal(rounds, np.repeat(np.arange(15), 10_000))
    (part,) = sorted(path.glob("part-*.parquet"))  # one part: no checkpoint in between
    assert pq.ParquetFile(part).metadata.num_row_groups >= 3  # two flushes and the close
    np.testing.assert_array_equal(np.bincount(ids, minlength=num_clients), ledger.count)


def test_log_of_a_hand_built_history(tmp_path):
    path = tmp_path / "ledger.parquet"
    ledger = _ledger(log_path=path)
    ledger.close()
    rounds, ids = read_log(path)
    assert rounds.tolist() == [0, 0, 0, 1, 1, 3, 3, 4]
    assert ids.tolist() == [0, 1, 2, 2, 3, 0, 2, 5]


def test_empty_log(tmp_path):
    path = tmp_path / "ledger.parquet"
    ParticipationLedger(10, log_path=path).close()
    rounds, ids = read_log(path)
    assert rounds.shape == (0,)
    assert ids.shape == (0,)


def test_rejected_records_are_not_logged(tmp_path):
    path = tmp_path / "ledger.parquet"
    ledger = ParticipationLedger(4, log_path=path)
    ledger.record(0, 0.0, _ids([1, 2]))
    with pytest.raises(ValueError):
        ledger.record(1, 0.0, _ids([3, 3]))
    with pytest.raises(ValueError):
        ledger.record(2, 0.0, _ids([0]))
    ledger.record(1, 0.0, _ids([0]))
    ledger.close()
    rounds, ids = read_log(path)
    assert rounds.tolist() == [0, 0, 1]
    assert ids.tolist() == [1, 2, 0]


def test_no_log_close_is_a_no_op():
    ledger = _ledger()
    ledger.close()
    ledger.close()
    ledger.record(5, 50.0, _ids([4]))  # the counters keep working
    assert ledger.count[4] == 1


def test_log_keeps_the_ids_as_committed(tmp_path):
    path = tmp_path / "ledger.parquet"
    ledger = ParticipationLedger(100, log_path=path)
    ids = np.array([1, 2, 3], dtype=np.int64)
    ledger.record(0, 0.0, ids)
    ids[:] = 99  # the caller reuses its buffer
    ledger.close()
    assert ledger.count[[1, 2, 3]].tolist() == [1, 1, 1]  # the counters are right ...
    assert read_log(path)[1].tolist() == [1, 2, 3]  # ... and so must the log be


@pytest.mark.parametrize("bad", [[-1], [100], [3, 100]])
def test_record_rejects_ids_outside_the_population(bad):
    ledger = ParticipationLedger(100)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        ledger.record(0, 0.0, np.array(bad, dtype=np.int64))
    assert ledger.rounds_recorded == 0
    assert ledger.count.sum() == 0


def test_round_start_times_survive_growth():
    ledger = ParticipationLedger(10)
    for r in range(300):  # past several doublings of the start-time buffer
        ledger.record(r, 10.0 * r, np.array([r % 10], dtype=np.int64))
    np.testing.assert_array_equal(ledger.last_start_s(np.arange(10)), 10.0 * np.arange(290, 300))
    assert ParticipationLedger(3).last_start_s(np.arange(3)).tolist() == [-np.inf] * 3


# -- checkpoints -------------------------------------------------------------------------------


def test_state_round_trips_and_a_killed_runs_log_parts_are_dropped(tmp_path):
    path = tmp_path / "participation.parquet"
    ledger = ParticipationLedger(10, log_path=path)
    ledger.record(0, 0.0, _ids([1, 2]))
    ledger.record(1, 60.0, _ids([2, 3]))
    state = ledger.state_dict()  # a checkpoint after round 1: one complete part
    assert state["log_parts"] == 1
    ledger.record(2, 120.0, _ids([4]))
    ledger.state_dict()  # a later checkpoint the resumed run does not use
    ledger.record(3, 180.0, _ids([5]))  # then the process dies mid-part
    ledger._log._flush()  # type: ignore[union-attr]  # rows on disk, part not complete
    assert len(list(path.glob("part-*.parquet"))) == 3

    resumed = ParticipationLedger(10, log_path=path)
    resumed.load_state_dict(state)
    assert len(list(path.glob("part-*.parquet"))) == 1
    assert resumed.rounds_recorded == 2 and resumed.count.tolist() == ledger_counts(
        10, [1, 2, 2, 3]
    )
    np.testing.assert_array_equal(resumed.last_start_s(_ids([1, 3, 0])), [0.0, 60.0, -np.inf])
    resumed.record(2, 120.0, _ids([4]))
    resumed.close()
    rounds, ids = read_log(path)
    assert rounds.tolist() == [0, 0, 1, 1, 2] and ids.tolist() == [1, 2, 2, 3, 4]
    with pytest.raises(ValueError, match="clients"):
        ParticipationLedger(11).load_state_dict(state)


def ledger_counts(num_clients: int, ids: list[int]) -> list[int]:
    return np.bincount(ids, minlength=num_clients).tolist()
