"""Client workers: Ray actors that train chunks of virtual clients and return partial sums.

A virtual client is a row, not a process: a worker builds each client's data, trains it, and
adds its update to the chunk's partial, one client after another. A chunk's partial is a pure
function of (weights, client ids, round, seed), so a crashed worker can simply be restarted and
its call retried.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from common.rng import Stream, generator
from engine.aggregation import Aggregator, PackedPartials, Partial
from engine.population import ClientData, Population
from engine.runtime.placement import assigned_device
from engine.training import (
    ClientUpdate,
    EvalStats,
    Faults,
    LocalTraining,
    ParameterLayout,
    evaluate,
    evaluate_clients,
    prefers_vectorised,
    train_client,
    train_clients,
)
from mechanisms.audit.canaries import Canaries
from mechanisms.clipping import clip_update

T = TypeVar("T")


@dataclass(frozen=True)
class Receipt:
    """What the driver needs to know of a worker's round, without fetching its partials.

    Attributes:
        failed: The clients whose training kept failing (not summed), in chunk order.
        train_s: Seconds the call spent training and summing its chunks.
    """

    failed: tuple[int, ...]
    train_s: float


class ClientWorker:
    """Trains and evaluates clients of one population. Wrapped in `ray.remote` by the driver.

    Args:
        population: The population; only the clients asked for are ever built.
        model_factory: Builds a scratch module of the run's architecture.
        training: Local SGD settings.
        aggregator: How updates are weighted and summed.
        seed: Run seed; client c's round-r stream is (seed, CLIENT_TRAIN, r, c).
        faults: Injected faults (none by default).
        canaries: The audit's canary clients, whose update is their direction at the clip
            norm (no data, no training); None: no canaries.
    """

    def __init__(
        self,
        population: Population,
        model_factory: Callable[[], nn.Module],
        training: LocalTraining,
        aggregator: Aggregator,
        seed: int,
        faults: Faults | None = None,
        canaries: Canaries | None = None,
    ) -> None:
        torch.set_num_threads(1)
        self._population = population
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU (fraction): move the model there
        # once and keep it; without a GPU everything stays on the CPU.
        self._model = model_factory().to(assigned_device())
        self._layout = ParameterLayout.of(self._model)
        self._training = training
        self._aggregator = aggregator
        self._seed = seed
        self._faults = faults or Faults()
        self._canaries = canaries
        device = next(self._model.parameters()).device
        auto = training.vectorise == "auto" and prefers_vectorised(self._model, device)
        self._vectorised = training.vectorise == "on" or auto
        self._eval_data: tuple[bytes, ClientData] | None = None
        self._eval_parts: list[ClientData] = []

    def train(
        self,
        weights: np.ndarray,
        round_idx: int,
        chunks: Sequence[np.ndarray],
        clip_norm: float | None = None,
    ) -> list[Partial]:
        """Trains every client of every chunk; returns one partial per chunk, in order.

        With a clip norm, each client's whole update is clipped to it before it is summed (by
        whichever aggregator), and every client gets weight 1 (a data-dependent weight would
        escape the clip norm). Every client of the chunk is summed: one whose update is not
        finite, or whose training kept failing, adds zeros (clipping bit -1/2), so that neither
        the sum's client count nor the ledger tells whether a client's data made it fail.
        Without a clip norm such clients are left out. Partials know the model's layout (its
        row-sparse and expert blocks), built once from the model.
        """
        params = self._on_model_device(weights)  # once per round, not once per client
        ids = [int(c) for chunk in chunks for c in chunk]
        updates = iter(self._with_canaries(params, round_idx, ids, clip_norm))  # all chunks
        partials = []
        for chunk in chunks:
            partial = self._aggregator.zeros(len(params), self._layout)
            partial.clip_norm = clip_norm
            for client_id in chunk.tolist():  # summed chunk by chunk, in client order
                update = next(updates)
                finite = update is not None and bool(np.isfinite(update.delta).all())
                if update is None:
                    partial.failed.append(client_id)
                elif not finite:
                    partial.nonfinite.append(client_id)
                if clip_norm is not None:
                    update = update or ClientUpdate(np.zeros(len(params), np.float32), 0, 0.0, 0)
                    delta, bit = clip_update(update.delta, clip_norm)
                    bit = bit if finite else -0.5
                    partial.add(dataclasses.replace(update, delta=delta), 1.0, bit)
                elif update is not None and finite:
                    partial.add(update, self._aggregator.client_weight(update))
            partials.append(self._aggregator.seal(partial, round_idx, chunk.tolist()))
        first_client = int(chunks[0][0]) if chunks and len(chunks[0]) else -1
        self._faults.maybe_crash(self._seed, round_idx, first_client)  # before returning
        return partials

    def train_with_receipt(
        self,
        weights: np.ndarray,
        round_idx: int,
        ids: np.ndarray,
        chunk_sizes: Sequence[int],
        clip_norm: float | None = None,
    ) -> tuple[PackedPartials, Receipt]:
        """`train` as the driver calls it: two returns, of which the driver reads the second.

        Args:
            weights: The round's weights.
            round_idx: The round.
            ids: The worker's chunks, concatenated (one array to ship, not one per chunk).
            chunk_sizes: The chunks' sizes, in order.
            clip_norm: As for `train`.

        Returns:
            The chunk partials packed for the server (`PackedPartials`), and the call's
            `Receipt`: the driver learns which clients failed without fetching partials.
        """
        start = time.perf_counter()
        chunks = np.split(ids, np.cumsum(chunk_sizes)[:-1])
        partials = self.train(weights, round_idx, chunks, clip_norm)
        failed = tuple(client for partial in partials for client in partial.failed)
        return PackedPartials(partials), Receipt(failed, time.perf_counter() - start)

    def _with_canaries(
        self, params: torch.Tensor, round_idx: int, ids: list[int], clip_norm: float | None
    ) -> list[ClientUpdate | None]:
        """`_updates` of the clients, in order, with each canary's update in its place.

        A canary's update is its direction at the round's clip norm; it trains nothing.
        """
        if self._canaries is None or not self._canaries.is_canary(np.array(ids)).any():
            return self._updates(params, round_idx, ids, clip_norm is not None)
        if clip_norm is None:
            raise RuntimeError("canaries need a clip norm: their update has the clip norm")
        canary = self._canaries.is_canary(np.array(ids)).tolist()
        real = [c for c, is_canary in zip(ids, canary, strict=True) if not is_canary]
        trained = iter(self._updates(params, round_idx, real, True))
        return [
            ClientUpdate(self._canaries.update(c, clip_norm), 0, 0.0, 0) if is_canary
            else next(trained)
            for c, is_canary in zip(ids, canary, strict=True)
        ]  # fmt: skip

    def _updates(
        self, params: torch.Tensor, round_idx: int, ids: list[int], private: bool
    ) -> list[ClientUpdate | None]:
        """The clients' updates in order; None for a client that failed.

        Vectorised: the clients' data is built one by one (a client that keeps failing is left
        out), then all are trained together. Otherwise each client is built and trained alone.
        A private run's failure lines name the error's type only (its text may quote data).
        """
        attempt = functools.partial(self._attempt, round_idx, quiet=private)
        if not self._vectorised:
            train = functools.partial(self._train_one, params, round_idx)
            return [attempt(c, functools.partial(train, c)) for c in ids]
        build = functools.partial(self._client_data, round_idx)
        datas = [attempt(c, functools.partial(build, c)) for c in ids]
        built = [(c, d) for c, d in zip(ids, datas, strict=True) if d is not None]
        rngs = [generator(self._seed, Stream.CLIENT_TRAIN, round_idx, c) for c, _ in built]
        trained = iter(
            train_clients(self._model, params, [d for _, d in built], self._training, rngs)
        )
        faults, seed = self._faults, self._seed
        return [
            None if d is None else faults.maybe_poison(next(trained), seed, round_idx, c)
            for c, d in zip(ids, datas, strict=True)
        ]

    def _client_data(self, round_idx: int, client_id: int) -> ClientData:
        """The client's examples (where an injected client failure strikes)."""
        self._faults.maybe_fail(self._seed, round_idx, client_id)
        return self._population.client_data(client_id)

    def _train_one(self, params: torch.Tensor, round_idx: int, client_id: int) -> ClientUpdate:
        """One client's update by the per-client loop."""
        data = self._client_data(round_idx, client_id)
        rng = generator(self._seed, Stream.CLIENT_TRAIN, round_idx, client_id)
        update = train_client(self._model, params, data, self._training, rng)
        return self._faults.maybe_poison(update, self._seed, round_idx, client_id)

    def _attempt(
        self, round_idx: int, client_id: int, work: Callable[[], T], quiet: bool = False
    ) -> T | None:
        """`work()`, retried `faults.client_retries` times if it raises; None if it never ran.

        The last error is reported on stderr (`quiet`, a clipped and so private run: its type,
        not its text, and that the client is summed as a zero update). A failed
        attempt leaves nothing behind: each starts again from the round's weights and the
        client's own seeded stream.
        """
        retries = self._faults.client_retries
        for attempt in range(retries + 1):
            try:
                return work()
            except Exception as error:  # a client's failure must not fail its round
                if attempt == retries:
                    why = type(error).__name__ + ("" if quiet else f": {error}")
                    fate = "summed as a zero update" if quiet else "left out"
                    print(
                        f"fedray: round {round_idx}: client {client_id} failed "
                        f"{attempt + 1} times ({why}); {fate}",
                        file=sys.stderr,
                    )
        return None

    def evaluate(self, weights: np.ndarray, client_ids: np.ndarray) -> EvalStats:
        """Evaluates `weights` on the given (held-out) clients; their data is cached."""
        key = client_ids.tobytes()
        if self._eval_data is None or self._eval_data[0] != key:
            parts = [self._population.client_data(c) for c in client_ids.tolist()]
            data = ClientData(
                x=np.concatenate([p.x for p in parts]), y=np.concatenate([p.y for p in parts])
            )
            self._eval_data = (key, data)
            self._eval_parts = parts
        params = self._on_model_device(weights)
        classes = self._population.num_classes
        if hasattr(self._model, "begin_client"):  # per-client local state: one client at a time
            return evaluate_clients(self._model, params, self._eval_parts, classes)
        return evaluate(self._model, params, self._eval_data[1], classes)

    def _on_model_device(self, weights: np.ndarray) -> torch.Tensor:
        """The round's weights as a tensor where the model lives (its GPU, or the CPU)."""
        return torch.tensor(weights, device=next(self._model.parameters()).device)
