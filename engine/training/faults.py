"""Fault injection: worker crashes, clients that keep failing, and non-finite updates.

Off by default. Tests and rehearsals turn it on to check that a fault costs time, never
correctness: a crashed worker's chunk is re-run (it is a pure function of weights, ids, round
and seed), a client that keeps failing is left out of the round and of the ledger, and a
non-finite update is left out of an unclipped sum and clipped to zeros in a clipped one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from common.errors import require
from common.rng import Stream, generator
from engine.training.client import ClientUpdate

# Sub-streams of Stream.FAULTS.
_CRASH, _FAIL, _POISON = 0, 1, 2


class InjectedClientError(RuntimeError):
    """The failure `Faults.client_failure_prob` injects into a client's training."""


@dataclass(frozen=True)
class Faults:
    """Injected faults, all off by default.

    Attributes:
        worker_crash_prob: Chance that a worker process dies (`os._exit`) after training its
            chunks of a round, before returning them; Ray restarts the actor and re-runs the
            call. Drawn from the seed, round, first client and process id, so that the
            restarted process draws afresh.
        nan_update_prob: Chance that a client's update is all NaN (from the seed, round and
            client); the worker leaves it out, or clips it to zeros.
        client_failure_prob: Chance that a client's training raises on every attempt of a
            round (from the seed, round and client); the worker gives up after
            `client_retries` retries and the client fails for the round.
        client_retries: Retries of a client whose training raised, before it fails.
    """

    worker_crash_prob: float = 0.0
    nan_update_prob: float = 0.0
    client_failure_prob: float = 0.0
    client_retries: int = 2

    def __post_init__(self) -> None:
        for key in ("worker_crash_prob", "nan_update_prob", "client_failure_prob"):
            value = getattr(self, key)
            require(0 <= value < 1, key, f"must be in [0, 1), got {value}")
        require(
            self.client_retries >= 0, "client_retries", f"must be >= 0, got {self.client_retries}"
        )

    def maybe_crash(self, seed: int, round_idx: int, first_client: int) -> None:
        """Kills this process with probability `worker_crash_prob`."""
        if self.worker_crash_prob > 0:
            keys = (_CRASH, round_idx, first_client + 1, os.getpid())
            rng = generator(seed, Stream.FAULTS, *keys)
            if rng.random() < self.worker_crash_prob:
                os._exit(1)

    def maybe_fail(self, seed: int, round_idx: int, client_id: int) -> None:
        """Raises `InjectedClientError` if the client is one that fails this round."""
        if self._draw(self.client_failure_prob, seed, _FAIL, round_idx, client_id):
            raise InjectedClientError(f"injected failure of client {client_id}")

    def maybe_poison(
        self, update: ClientUpdate, seed: int, round_idx: int, client_id: int
    ) -> ClientUpdate:
        """The update, or an all-NaN copy of it for a client drawn to send one."""
        if self._draw(self.nan_update_prob, seed, _POISON, round_idx, client_id):
            return dataclasses.replace(update, delta=np.full_like(update.delta, np.nan))
        return update

    @staticmethod
    def _draw(prob: float, seed: int, kind: int, round_idx: int, client_id: int) -> bool:
        if prob == 0:
            return False
        return bool(generator(seed, Stream.FAULTS, kind, round_idx, client_id).random() < prob)
