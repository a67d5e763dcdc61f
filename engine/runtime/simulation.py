"""One experiment's simulation: its actor pool and its round pipeline, started together.

`Simulation` is what the runner drives: it builds the scheduler, starts an `ActorPool` (the
workers and the server, through a `Backend`) and runs rounds through a `RoundPipeline` (plan,
chunk, train, apply, commit), evaluating and checkpointing between them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.plan import Experiment
from engine.runtime.backends import Backend
from engine.runtime.pipeline import RoundPipeline, initial_weights, make_scheduler
from engine.runtime.pool import ActorPool, ServerDiedError
from engine.scheduling import ParticipationLedger
from engine.training import EvalStats

__all__ = ["ServerDiedError", "Simulation", "initial_weights", "make_scheduler"]


class Simulation:
    """The actors of one experiment, and the round pipeline that drives them.

    With the default `RayBackend` (Ray must be initialised before construction), it creates
    `cluster.num_workers` `ClientWorker` actors (restarted and retried on failure: their calls
    are pure functions) and one `ParameterServer` actor (not restarted: it holds the state).
    `LocalBackend` runs the same rounds in this process, to the same results.

    Args:
        experiment: The validated experiment.
        ledger: The participation ledger to commit to; None keeps a fresh one without a log.
        backend: Where the actors live; None: a `RayBackend`.

    Attributes:
        experiment: The experiment.
        num_params: The model's parameter count.
        registry: The population's registry.
        scheduler: Plans rounds and commits them to the ledger (`scheduler.ledger`).
        pool: The started actors.
        pipeline: The round pipeline over `pool`.
    """

    def __init__(
        self,
        experiment: Experiment,
        ledger: ParticipationLedger | None = None,
        backend: Backend | None = None,
    ) -> None:
        exp = self.experiment = experiment
        initial = initial_weights(exp)
        self.num_params = len(initial)
        self._initial = initial if exp.canaries is not None else None
        self.registry = exp.population.registry()
        self.scheduler = make_scheduler(exp, self.registry, initial.nbytes, ledger)
        self._eval_ids = exp.population.held_out_ids(exp.evaluation.num_clients)
        self.pool = ActorPool(exp, initial, backend)  # ends what it started if it fails
        try:
            self.pipeline = RoundPipeline(exp, self.scheduler, self.pool, self.registry)
        except BaseException:
            self.pool.close()
            raise

    @property
    def num_workers(self) -> int:
        """The number of client workers."""
        return self.pool.num_workers

    @property
    def clip_norm(self) -> float | None:
        """The next round's clip norm (None: no clipping)."""
        return self.pipeline.clip_norm

    @property
    def now_s(self) -> float:
        """Simulated time at which the next round starts (the last committed round's end)."""
        return self.pipeline.now_s

    def run_round(self, round_idx: int) -> dict[str, float]:
        """Runs round `round_idx` (`RoundPipeline.run_round`); returns its metrics."""
        return self.pipeline.run_round(round_idx)

    def evaluate(self) -> EvalStats:
        """Evaluates the current weights on the held-out clients, split across the workers."""
        return self.pool.evaluate(self.pipeline.weights, self._eval_ids)

    def weights(self) -> np.ndarray:
        """The current weights, fetched to the driver."""
        return np.asarray(self.pool.get(self.pipeline.weights))

    def canary_cosines(self) -> tuple[np.ndarray, np.ndarray]:
        """The canaries' cosine statistics: with the whole change, and the largest per round.

        The whole change is the model's since round 0; the largest per-round cosines are
        `ParameterServer.largest_cosines`.

        Returns:
            Two float64 [2, C] arrays, rows (canaries, null directions): the final change's
            cosines, and the largest per-round ones.

        Raises:
            ValueError: If the run has no canaries.
        """
        canaries, initial = self.experiment.canaries, self._initial
        if canaries is None or initial is None:
            raise ValueError("this run has no canaries (audit.num_canaries=0)")
        final = np.stack(canaries.cosines(self.weights() - initial))
        return final, self.pool.largest_cosines()

    def state_dict(self) -> dict[str, Any]:
        """The server's state and the schedule's (clock and ledger), for a checkpoint."""
        return self.pipeline.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()` of a simulation of the same experiment."""
        self.pipeline.load_state_dict(state)

    def close(self) -> None:
        """Ends the job's actors (for good: no restart) and releases their resources.

        Idempotent.
        """
        self.pool.close()

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The actors' handles under their former names, which tests read (and regroup by node).

    @property
    def _server(self) -> Any:
        return self.pool.server

    @property
    def _workers(self) -> list[Any]:
        return self.pool.workers

    @property
    def _worker_nodes(self) -> list[str]:
        return self.pool.nodes

    @_worker_nodes.setter
    def _worker_nodes(self, nodes: list[str]) -> None:
        self.pool.nodes = nodes

    @property
    def _reducers(self) -> dict[str, Any]:
        return self.pool.reducers

    @_reducers.setter
    def _reducers(self, reducers: dict[str, Any]) -> None:
        self.pool.reducers = reducers
