"""The participation ledger: which client's update reached the aggregate of which round.

The ledger is the source of truth for participation: policies read their limits from it, the
privacy accountant checks the declared bound against it, and only committed contributions (a
client whose update was summed into the round's aggregate) are ever recorded. A selected client
that dropped out or straggled past the deadline is not. A client whose training failed (or gave
a non-finite update) is recorded when updates are clipped, since it was summed as a zero update
so that the release does not depend on its data, and left out of the sum and the ledger without
clipping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mechanisms.participation import ObservedParticipation

_NEVER = -1
_NO_GAP = np.iinfo(np.int32).max
_LOG_ROWS = 1 << 16


class ParticipationLedger:
    """Per-client participation counters in compact arrays, and an optional Parquet log.

    Guarantees:
        Rounds are committed in order and once each, a client at most once per round, and only
        clients whose update reached the round's aggregate (the caller commits after the server
        applied the round). `check` and `observed` therefore bound every client's real
        contributions, which is what the privacy accountant needs.

    Memory: 12 bytes per client (count, last round and smallest gap, int32 each), plus at most
    16 bytes per round for the rounds' start times.

    Args:
        num_clients: Population size N.
        log_path: Directory of Parquet part files to append (round, client_id) rows to; None
            keeps no log.
    """

    def __init__(self, num_clients: int, log_path: Path | None = None) -> None:
        self.count = np.zeros(num_clients, dtype=np.int32)
        self.last_round = np.full(num_clients, _NEVER, dtype=np.int32)
        self.min_gap = np.full(num_clients, _NO_GAP, dtype=np.int32)
        self._starts = np.full(64, -np.inf, dtype=np.float64)  # grows by doubling
        self._rounds = 0
        self._log = _ParquetLog(log_path) if log_path is not None else None

    @property
    def rounds_recorded(self) -> int:
        """Number of rounds committed so far."""
        return self._rounds

    def record(self, round_idx: int, start_s: float, client_ids: np.ndarray) -> None:
        """Commits the clients whose updates reached the aggregate of round `round_idx`.

        Rounds must be committed in order, once each, and a client at most once per round.

        Raises:
            ValueError: a round out of order, or a client twice in one round.
        """
        if round_idx != self.rounds_recorded:
            raise ValueError(f"round {round_idx} committed out of order: expected {self._rounds}")
        ids = np.array(client_ids, dtype=np.int64)  # a copy: the log keeps it
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"round {round_idx}: a client is committed twice")
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.count)):
            raise ValueError(f"round {round_idx}: client ids must be in [0, {len(self.count)})")
        last = self.last_round[ids]
        seen = last != _NEVER
        self.min_gap[ids[seen]] = np.minimum(self.min_gap[ids[seen]], round_idx - last[seen])
        self.last_round[ids] = round_idx
        self.count[ids] += 1
        if self._rounds + 1 >= len(self._starts):
            grown = np.full(2 * len(self._starts), -np.inf, dtype=np.float64)
            grown[: self._rounds] = self._starts[: self._rounds]
            self._starts = grown
        self._starts[self._rounds] = start_s
        self._rounds += 1
        if self._log is not None:
            self._log.append(round_idx, ids)

    def last_start_s(self, index: Any) -> np.ndarray:
        """Simulated start time of each client's latest round (-inf for never), by `index`."""
        # _NEVER = -1 picks the last slot, which is always a -inf sentinel past the rounds.
        return self._starts[self.last_round[index]]

    def observed(self) -> ObservedParticipation:
        """The tightest participation bound the committed rounds satisfy."""
        gap = int(self.min_gap.min()) if len(self.min_gap) else _NO_GAP
        return ObservedParticipation(
            max_participations=int(self.count.max()) if len(self.count) else 0,
            min_separation=None if gap == _NO_GAP else gap,
            clients=int(np.count_nonzero(self.count)),
            contributions=int(self.count.sum(dtype=np.int64)),
        )

    def check(self, max_participations: int | None, min_separation: int) -> bool:
        """Whether every client joined at most k times, any two rounds >= b apart.

        Args:
            max_participations: k, or None for no limit.
            min_separation: b.
        """
        seen = self.observed()
        k_holds = max_participations is None or seen.max_participations <= max_participations
        b_holds = seen.min_separation is None or seen.min_separation >= min_separation
        return k_holds and b_holds

    def state_dict(self) -> dict[str, Any]:
        """Copies of the counters and start times, and how many log parts they cover.

        Completes the log's current part file first, so the state names only complete parts.
        """
        return {
            "count": self.count.copy(),
            "last_round": self.last_round.copy(),
            "min_gap": self.min_gap.copy(),
            "starts": self._starts[: self._rounds].copy(),
            "log_parts": self._log.sync() if self._log is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()`: later log parts (a killed run's) are deleted.

        Raises:
            ValueError: If the state is of another population size.
        """
        if len(state["count"]) != len(self.count):
            raise ValueError(
                f"state has {len(state['count'])} clients, the ledger {len(self.count)}"
            )
        self.count = np.array(state["count"], dtype=np.int32)
        self.last_round = np.array(state["last_round"], dtype=np.int32)
        self.min_gap = np.array(state["min_gap"], dtype=np.int32)
        self._rounds = len(state["starts"])
        self._starts = np.full(max(64, 2 * self._rounds), -np.inf, dtype=np.float64)
        self._starts[: self._rounds] = state["starts"]
        if self._log is not None:
            self._log.truncate(state["log_parts"] or 0)

    def close(self) -> None:
        """Flushes and closes the Parquet log (idempotent)."""
        if self._log is not None:
            self._log.sync()
            self._log = None


class _ParquetLog:
    """Append-only (round, client_id) rows: a directory of Parquet part files, in order.

    Rows are buffered into row groups of 64k rows. `sync` completes the current part file, so
    that a checkpoint can name how many parts it covers; a part being written when the process
    was killed is unreadable, and a resumed run deletes it (see `ParticipationLedger`).
    """

    def __init__(self, path: Path) -> None:
        import pyarrow as pa  # Imported here: only runs that keep a log need it.

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.parts = 0  # complete part files
        self._schema = pa.schema([("round", pa.int32()), ("client_id", pa.int64())])
        self._writer: Any = None
        self._rounds: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._rows = 0

    def append(self, round_idx: int, ids: np.ndarray) -> None:
        self._rounds.append(np.full(len(ids), round_idx, dtype=np.int32))
        self._ids.append(ids)
        self._rows += len(ids)
        if self._rows >= _LOG_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._rows:
            if self._writer is None:
                part = self.path / f"part-{self.parts:05d}.parquet"
                self._writer = pq.ParquetWriter(str(part), self._schema)
            columns = [np.concatenate(self._rounds), np.concatenate(self._ids)]
            self._writer.write_table(pa.Table.from_arrays(columns, schema=self._schema))
        self._rounds, self._ids, self._rows = [], [], 0

    def sync(self) -> int:
        """Writes the buffered rows and completes the part file; returns the complete parts."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.parts += 1
        return self.parts

    def truncate(self, parts: int) -> None:
        """Keeps the first `parts` part files and deletes the others (nothing is buffered)."""
        for extra in sorted(self.path.glob("part-*.parquet"))[parts:]:
            extra.unlink()
        self.parts = parts


def read_log(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads a ledger's Parquet log: (rounds int32, client ids int64), in commit order.

    Args:
        path: The log's directory of part files (or one Parquet file).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    schema = pa.schema([("round", pa.int32()), ("client_id", pa.int64())])
    table = (
        pa.concat_tables([pq.read_table(str(f)) for f in files]) if files else schema.empty_table()
    )
    return table["round"].to_numpy(), table["client_id"].to_numpy()
