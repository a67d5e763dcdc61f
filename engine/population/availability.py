"""Availability: which clients are online at simulated time t, vectorised over the population."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.special import ndtri

from common.errors import require
from common.rng import Stream, generator, require_seed, uniform


class Availability(ABC):
    """Extension point: who can be reached at simulated time `t` (seconds)."""

    num_clients: int

    @abstractmethod
    def available(self, t: float) -> np.ndarray:
        """Returns a bool mask over all `num_clients` clients."""


@dataclass(frozen=True)
class AlwaysAvailable(Availability):
    """Every client is reachable at every time.

    Attributes:
        num_clients: Population size N.
    """

    num_clients: int

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")

    def available(self, t: float) -> np.ndarray:
        """All true."""
        return np.ones(self.num_clients, dtype=bool)


_TICKS = 1 << 16  # A day in uint16 ticks (1.32 s each): uint16 arithmetic wraps exactly at 24 h.
_BLOCK = 1 << 16


def _day_ticks(hours: np.ndarray) -> np.ndarray:
    """Hours of the day (any real) as uint16 ticks modulo 24 h."""
    return (np.floor(np.mod(hours, 24.0) * (_TICKS / 24.0)).astype(np.int64) % _TICKS).astype(
        np.uint16
    )


@dataclass(frozen=True)
class DiurnalAvailability(Availability):
    """Each client is online in one daily window of its local time, e.g. charging at night.

    Client c lives in a time zone at UTC offset `utc_offset_h + U(-1, 1) * timezone_spread_h`
    and is online each day from `window_start_h + N(0, jitter_h)` local time for
    `window_hours + N(0, jitter_h)` hours (its own fixed jitter, clipped to [0, 24)). Everything
    is a pure function of (seed, client id): a client's window does not depend on N.

    Memory: 4 bytes per client (window start and length as uint16 ticks of 1.32 s). Each call
    is two uint16 passes over the population.

    Attributes:
        num_clients: Population size N.
        seed: Seed of the time zones and jitter.
        window_start_h: Local hour at which the window opens (22 = 10 pm).
        window_hours: Mean window length in hours.
        jitter_h: Standard deviation of each client's offset of start and length, in hours.
        utc_offset_h: Centre of the time zones, hours east of UTC.
        timezone_spread_h: Half-width of the uniform spread of time zones, in hours.
    """

    num_clients: int
    seed: int = 0
    window_start_h: float = 22.0
    window_hours: float = 8.0
    jitter_h: float = 1.0
    utc_offset_h: float = 0.0
    timezone_spread_h: float = 3.0

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        require_seed(self.seed)
        require(0 <= self.window_hours <= 24, "window_hours", "must be in [0, 24]")
        require(self.jitter_h >= 0, "jitter_h", "must be >= 0")
        require(0 <= self.timezone_spread_h <= 12, "timezone_spread_h", "must be in [0, 12]")

    @cached_property
    def _windows(self) -> tuple[np.ndarray, np.ndarray]:
        start = np.empty(self.num_clients, dtype=np.uint16)
        length = np.empty(self.num_clients, dtype=np.uint16)
        for lo in range(0, self.num_clients, _BLOCK):
            ids = np.arange(lo, min(lo + _BLOCK, self.num_clients), dtype=np.int64)
            zone, start_jitter, length_jitter = (
                uniform(self.seed, Stream.AVAILABILITY, 3 * ids + j) for j in range(3)
            )
            offset = self.utc_offset_h + (2 * zone - 1) * self.timezone_spread_h
            local_start = self.window_start_h + self.jitter_h * ndtri(start_jitter)
            hours = self.window_hours + self.jitter_h * ndtri(length_jitter)
            start[lo : lo + len(ids)] = _day_ticks(local_start - offset)
            length[lo : lo + len(ids)] = np.clip(hours * (_TICKS / 24.0), 0, _TICKS - 1)
        return start, length

    def available(self, t: float) -> np.ndarray:
        """Online iff (t - window start) mod 24 h < window length, in uint16 ticks."""
        start, length = self._windows
        now = _day_ticks(np.array([t / 3600.0]))[0]
        return np.less(np.subtract(now, start), length)


class _ChainState:
    """The latest simulated slot of a Markov chain and its state (a driver-side cache)."""

    def __init__(self) -> None:
        self.slot = -1
        self.online = np.empty(0, dtype=bool)


@dataclass(frozen=True)
class MarkovAvailability(Availability):
    """Two-state on/off Markov chain per client, in slots of `slot_s` seconds.

    In each slot an online client goes offline with probability slot_s / mean_on_h and an
    offline one comes online with probability slot_s / mean_off_h (geometric holding times with
    those means). Slot 0 starts from the stationary distribution. The draw of slot s is the
    stream (seed, AVAILABILITY, s), so the mask at t is a pure function of t; the latest slot is
    cached, so queries at increasing t cost one O(N) step per slot passed, and an earlier t
    replays from slot 0.

    Memory: 1 byte per client (plus a transient 2 bytes per client while stepping).

    Attributes:
        num_clients: Population size N.
        seed: Seed of the chain.
        mean_on_h: Mean online period, in hours.
        mean_off_h: Mean offline period, in hours.
        slot_s: Length of a slot, in seconds.
    """

    num_clients: int
    seed: int = 0
    mean_on_h: float = 2.0
    mean_off_h: float = 6.0
    slot_s: float = 600.0
    _chain: _ChainState = field(default_factory=_ChainState, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        require_seed(self.seed)
        require(self.slot_s > 0, "slot_s", "must be > 0")
        for key in ("mean_on_h", "mean_off_h"):
            hours = getattr(self, key)
            require(hours * 3600 >= self.slot_s, key, f"must be >= slot_s (got {hours} h)")

    @property
    def online_fraction(self) -> float:
        """The stationary probability of being online."""
        return self.mean_on_h / (self.mean_on_h + self.mean_off_h)

    def _thresholds(self) -> np.ndarray:
        """uint16 thresholds: stay online below [1], come online below [0]."""
        come_on = self.slot_s / (self.mean_off_h * 3600)
        stay_on = 1.0 - self.slot_s / (self.mean_on_h * 3600)
        return np.rint(np.array([come_on, stay_on]) * _TICKS).astype(np.int64).clip(0, _TICKS - 1)

    def _draw(self, slot: int) -> np.ndarray:
        rng = generator(self.seed, Stream.AVAILABILITY, slot)
        return rng.integers(0, _TICKS, size=self.num_clients, dtype=np.uint16)

    def available(self, t: float) -> np.ndarray:
        """The chain's state in the slot containing t."""
        target = max(0, int(np.floor(t / self.slot_s)))
        chain = self._chain
        if target < chain.slot or chain.slot < 0:
            chain.slot = 0
            chain.online = self._draw(0) < round(self.online_fraction * _TICKS)
        thresholds = self._thresholds().astype(np.uint16)
        while chain.slot < target:
            chain.slot += 1
            chain.online = self._draw(chain.slot) < thresholds[chain.online.view(np.uint8)]
        return chain.online.copy()
