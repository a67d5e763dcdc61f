"""A job's actors: the client workers and the parameter server, behind a `Backend`.

The pool starts the actors, sends them calls and awaits their results; it decides nothing about
rounds (that is `engine.runtime.pipeline.RoundPipeline`). Its calls return references (Ray's, or
`LocalBackend`'s in-process ones): a caller passes them on without fetching model-sized data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from engine.plan import Experiment
from engine.runtime.backends import Backend, RayBackend
from engine.training import EvalStats


class ServerDiedError(RuntimeError):
    """The parameter server actor died: its state is lost, the run cannot go on."""


class ActorPool:
    """The workers and the server of one experiment, started through `backend`.

    With the default `RayBackend` (Ray must be initialised first), the workers are Ray actors
    that restart and retry on failure (their calls are pure functions) and the server one that
    does not (it holds the state). `LocalBackend` makes them objects in this process.

    Args:
        experiment: The validated experiment.
        initial: The server's initial flat weights.
        backend: Where the actors live; None: a `RayBackend`.

    Attributes:
        workers: The client workers' handles, in worker order.
        server: The parameter server's handle.
        nodes: Each worker's node id.
        reducers: Per-node reducers' handles by node id (empty: the server reduces alone).
    """

    def __init__(
        self, experiment: Experiment, initial: np.ndarray, backend: Backend | None = None
    ) -> None:
        self._backend = backend or RayBackend()
        try:
            actors = self._backend.start(experiment, initial)
            self.workers, self.server = actors.workers, actors.server
            self.nodes, self.reducers = actors.nodes, actors.reducers
            ready = [actor.__ray_ready__.remote() for actor in [*self.workers, self.server]]
            self._backend.get(ready)
        except BaseException:
            self.close()  # a half-started job must not keep its reservation
            raise

    @property
    def num_workers(self) -> int:
        """The number of client workers."""
        return len(self.workers)

    def get(self, refs: Any) -> Any:
        """The value of a result reference, or a list of them (`Backend.get`)."""
        return self._backend.get(refs)

    def from_server(self, refs: Any, round_idx: int) -> Any:
        """`get` of server results; a dead server raises `ServerDiedError`.

        Args:
            refs: The references (the server's, or computed from its weights).
            round_idx: The round, for the message (-1: between rounds).
        """
        try:
            return self._backend.get(refs)
        except ray.exceptions.RayActorError as error:
            raise ServerDiedError(f"the parameter server died in round {round_idx}") from error

    def weights(self) -> Any:
        """A reference to the server's current weights."""
        return self.server.weights.remote()

    def train(
        self,
        weights: Any,
        round_idx: int,
        work: Sequence[Sequence[np.ndarray]],
        clip_norm: float | None,
    ) -> tuple[list[Any], list[Any]]:
        """Sends each worker its chunks; a worker without any gets no call.

        Args:
            weights: The round's weights (a reference: the workers wait for it).
            round_idx: The round.
            work: Per worker, its chunks of client ids, in chunk order.
            clip_norm: The round's clip norm (None: no clipping).

        Returns:
            What the server sums (the workers' packed partials, or the node reducers' sums of
            them) and the workers' `Receipt`s, as references.
        """
        calls = [
            (node, self._train(worker, weights, round_idx, chunks, clip_norm))
            for worker, node, chunks in zip(self.workers, self.nodes, work, strict=True)
            if chunks
        ]
        partials = self._reduced([(node, refs[0]) for node, refs in calls])
        return partials, [refs[1] for _, refs in calls]

    @staticmethod
    def _train(
        worker: Any,
        weights: Any,
        round_idx: int,
        chunks: Sequence[np.ndarray],
        clip_norm: float | None,
    ) -> Any:
        """Sends `chunks` to `worker`; returns the refs to its partials and its receipt."""
        sizes = [len(chunk) for chunk in chunks]
        return worker.train_with_receipt.options(num_returns=2).remote(
            weights, round_idx, np.concatenate(chunks), sizes, clip_norm
        )

    def _reduced(self, refs: list[tuple[str, Any]]) -> list[Any]:
        """The workers' partials, summed per node first when there are node reducers."""
        if not self.reducers:
            return [ref for _, ref in refs]
        by_node: dict[str, list[Any]] = {}
        for node, ref in refs:
            by_node.setdefault(node, []).append(ref)
        return [self.reducers[node].reduce.remote(*group) for node, group in by_node.items()]

    def apply(self, round_idx: int, partials: Sequence[Any]) -> tuple[Any, Any]:
        """Has the server apply round `round_idx`; returns refs to its new weights and metrics."""
        weights, stats = self.server.apply.options(num_returns=2).remote(round_idx, *partials)
        return weights, stats

    def server_state(self) -> dict[str, Any]:
        """The server's state (`ParameterServer.state_dict`), fetched to the driver."""
        state: dict[str, Any] = self.from_server(self.server.state_dict.remote(), -1)
        return state

    def largest_cosines(self) -> np.ndarray:
        """`ParameterServer.largest_cosines`, fetched to the driver."""
        largest: np.ndarray = self.from_server(self.server.largest_cosines.remote(), -1)
        return largest

    def load_server_state(self, state: dict[str, Any]) -> None:
        """Restores the server's state of `server_state()`."""
        self._backend.get(self.server.load_state_dict.remote(state))

    def evaluate(self, weights: Any, client_ids: np.ndarray) -> EvalStats:
        """Evaluates `weights` on `client_ids`, split across the workers, merged in order."""
        parts = np.array_split(client_ids, self.num_workers)
        refs = [
            worker.evaluate.remote(weights, ids)
            for worker, ids in zip(self.workers, parts, strict=True)
            if len(ids)
        ]
        stats: list[EvalStats] = self.from_server(refs, -1)  # the weights come from it
        total = stats[0]
        for other in stats[1:]:
            total.merge(other)
        return total

    def close(self) -> None:
        """Ends the actors (for good: no restart) and releases their resources. Idempotent."""
        self._backend.close()
