"""The driver's round loop: select a cohort, fan chunks out to workers, apply on the server.

One round, as data: availability mask -> cohort ids -> chunks -> one list of chunk partials per
worker -> the server reduces them in chunk order, adds noise, steps the strategy, and returns
the new weights into the object store. The driver passes references only: it never copies
model-sized data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from engine.backends import Backend, RayBackend
from engine.chunks import assign, plan_chunks
from engine.client import EvalStats
from engine.experiment import Experiment
from engine.ledger import ParticipationLedger
from engine.models import flatten, init_parameters
from engine.population import ClientRegistry
from engine.rng import Stream, generator
from engine.schedule import RoundFailedError, RoundPlan, Scheduler
from engine.workers import Receipt
from mechanisms.clipping import AdaptiveClipping


class ServerDiedError(RuntimeError):
    """The parameter server actor died: its state is lost, the run cannot go on."""


@dataclass(frozen=True)
class _SentRound:
    """A round whose chunks are on their way to the workers.

    Attributes:
        plan: The round as planned.
        refs: What the server will sum: the workers' (or node reducers') partials.
        receipts: The workers' `Receipt`s: what the driver itself reads of the round.
        now_s: The scheduler's clock before the round was planned.
    """

    plan: RoundPlan
    refs: list[Any]
    receipts: list[Any]
    now_s: float


def initial_weights(experiment: Experiment) -> np.ndarray:
    """The model's initial flat weights, a function of the run seed alone."""
    model = experiment.model_factory()
    init_parameters(model, seed=int(generator(experiment.seed, Stream.MODEL_INIT).integers(2**62)))
    return flatten(model)


def make_scheduler(
    experiment: Experiment,
    registry: ClientRegistry,
    model_bytes: int,
    ledger: ParticipationLedger | None = None,
) -> Scheduler:
    """The round scheduler of `experiment`, with a fresh ledger unless one is given."""
    exp = experiment
    return Scheduler(
        seed=exp.seed,
        availability=exp.availability,
        participation=exp.participation,
        clock=exp.clock,
        devices=exp.devices,
        num_examples=exp.clock.timed_counts(
            registry.num_examples, exp.mechanism.noise_multiplier > 0
        ),
        epochs=exp.training.epochs,
        model_bytes=model_bytes,
        ledger=ParticipationLedger(registry.num_clients) if ledger is None else ledger,
    )


class Simulation:
    """Ray actors for one experiment, and the round loop that drives them.

    With the default `RayBackend` (Ray must be initialised before construction), it creates
    `cluster.num_workers` `ClientWorker` actors (restarted and retried on failure: their calls
    are pure functions) and one `ParameterServer` actor (not restarted: it holds the state).
    `LocalBackend` runs the same round in this process, to the same results.

    Args:
        experiment: The validated experiment.
        ledger: The participation ledger to commit to; None keeps a fresh one without a log.
        backend: Where the actors live; None: a `RayBackend`.
    """

    def __init__(
        self,
        experiment: Experiment,
        ledger: ParticipationLedger | None = None,
        backend: Backend | None = None,
    ) -> None:
        self._backend = backend or RayBackend()
        self._pending: _SentRound | None = None
        try:
            self._start(experiment, ledger)
        except BaseException:
            self.close()  # a half-started job must not keep its reservation
            raise

    def _start(self, experiment: Experiment, ledger: ParticipationLedger | None) -> None:
        """Builds the scheduler and starts the job's actors (see the class docstring)."""
        self.experiment = experiment
        exp = experiment
        initial = initial_weights(exp)
        self.num_params = len(initial)
        self.registry = exp.population.registry()
        self.scheduler = make_scheduler(exp, self.registry, initial.nbytes, ledger)
        actors = self._backend.start(exp, initial)
        self._workers, self._server = actors.workers, actors.server
        self._worker_nodes, self._reducers = actors.nodes, actors.reducers
        self.num_workers = len(self._workers)
        self.clip_norm = exp.clipping.initial_norm
        # The next round goes out before this one's server step, unless that step decides its
        # clip norm (adaptive clipping).
        self._pipelined = not isinstance(exp.clipping, AdaptiveClipping)
        self._weights = self._server.weights.remote()
        self._backend.get([self._weights, *[w.__ray_ready__.remote() for w in self._workers]])
        self._eval_ids = exp.population.held_out_ids(exp.evaluation.num_clients)

    def run_round(self, round_idx: int) -> dict[str, float]:
        """Runs one round and waits for the server to apply it; returns the round's metrics.

        Once this round's clients are trained, and before the server has applied them, the
        round is committed to the ledger (which clients failed comes from the workers' small
        receipts: the driver never fetches partials) and the next round is planned and sent
        to the workers, waiting there for the new weights (`_send_next`): no round trip to
        the driver sits between two rounds. A failure in this round's server step still ends the run
        before the next round's metrics exist.

        Metrics include `system/train_s` (the slowest worker's training and summing),
        `system/server_s` (the server's step) and `system/overhead_s`: the round's wall time
        above those two, i.e. what Ray and the driver add. (A round sent ahead starts
        training before this call; time the caller spends between rounds hides in it.)
        """
        start = time.perf_counter()
        sent = self._sent_round(round_idx)
        cohort = sent.plan.cohort
        self._weights, stats_ref = self._server.apply.options(num_returns=2).remote(
            round_idx, *sent.refs
        )
        receipts: list[Receipt] = self._backend.get(sent.receipts)
        failed = np.sort(np.array([c for receipt in receipts for c in receipt.failed], np.int64))
        clipped = self.clip_norm is not None  # failed clients were summed as zeros
        self.scheduler.commit(sent.plan, exclude=None if clipped else failed)
        if self._pipelined:
            self._send_next(round_idx + 1)
        metrics: dict[str, float] = self._from_server(stats_ref, round_idx)
        summed = metrics["participation/clients_aggregated"]
        if not clipped:  # unclipped, failed and non-finite clients are left out of the sum
            summed += metrics["system/nonfinite_updates"] + len(failed)
        strangers = len(failed) and not np.isin(failed, cohort).all()
        if summed != len(cohort) or strangers:
            raise RuntimeError(f"round {round_idx}: the aggregate is not the planned cohort")
        if len(failed) == len(cohort):
            raise RuntimeError(f"round {round_idx}: every client failed (see the errors above)")
        self.clip_norm = metrics.get("privacy/next_clip_norm", self.clip_norm)
        round_s = time.perf_counter() - start
        train_s = max(receipt.train_s for receipt in receipts)
        metrics.update(sent.plan.metrics())
        metrics.update(
            {
                "system/cohort_examples": float(self.registry.num_examples[cohort].sum()),
                "system/round_s": round_s,
                "system/client_updates_per_s": len(cohort) / round_s,
                "system/train_s": train_s,
                "system/overhead_s": round_s - train_s - metrics["system/server_s"],
            }
        )
        return metrics

    def _sent_round(self, round_idx: int) -> _SentRound:
        """Round `round_idx` on its way to the workers: sent ahead by the last round, or now."""
        pending, self._pending = self._pending, None
        if pending is not None and pending.plan.round_idx == round_idx:
            return pending
        if pending is not None:  # sent ahead for another round: undo its planning
            self.scheduler.now_s = pending.now_s
        return self._send(round_idx)

    def _send(self, round_idx: int) -> _SentRound:
        """Plans round `round_idx` and sends its chunks off with `self._weights`.

        The weights are a reference: the workers wait for the server to make them.
        """
        now_s = self.scheduler.now_s
        plan = self.scheduler.plan(round_idx)
        chunks = plan_chunks(self.experiment, plan.cohort)
        # Chunks go to workers by the counts the clock times (in a private run not the
        # clients' own: with per-node sums, the grouping of float sums must not depend on data).
        examples = [float(self.scheduler.num_examples[chunk].sum()) for chunk in chunks]
        work = assign(chunks, self.num_workers, examples)
        calls = [
            (node, self._train(worker, round_idx, mine))
            for worker, node, mine in zip(self._workers, self._worker_nodes, work, strict=True)
            if mine
        ]
        partials = self._reduced([(node, refs[0]) for node, refs in calls])
        return _SentRound(plan, partials, [refs[1] for _, refs in calls], now_s)

    def _train(self, worker: Any, round_idx: int, chunks: list[np.ndarray]) -> Any:
        """Sends `chunks` to `worker`; returns the refs to its partials and its receipt."""
        sizes = [len(chunk) for chunk in chunks]
        return worker.train_with_receipt.options(num_returns=2).remote(
            self._weights, round_idx, np.concatenate(chunks), sizes, self.clip_norm
        )

    def _send_next(self, round_idx: int) -> None:
        """Sends round `round_idx` ahead, if the run has it.

        A round that cannot be planned is left to `run_round`, which plans it again and raises.
        """
        if round_idx >= self.experiment.rounds:
            return
        now_s = self.scheduler.now_s
        try:
            self._pending = self._send(round_idx)
        except RoundFailedError:
            self.scheduler.now_s = now_s

    def _from_server(self, ref: Any, round_idx: int) -> Any:
        """The value of a server call's `ref`; a dead server raises `ServerDiedError`."""
        try:
            return self._backend.get(ref)
        except ray.exceptions.RayActorError as error:
            raise ServerDiedError(f"the parameter server died in round {round_idx}") from error

    def state_dict(self) -> dict[str, Any]:
        """The server's state and the scheduler's (clock and ledger), for a checkpoint.

        A round sent ahead is not in it: the clock is the one from before it was planned.
        """
        scheduler = self.scheduler.state_dict()
        if self._pending is not None:
            scheduler["now_s"] = self._pending.now_s
        return {
            "server": self._from_server(self._server.state_dict.remote(), -1),
            "scheduler": scheduler,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()` of a simulation of the same experiment."""
        self._pending = None
        self._backend.get(self._server.load_state_dict.remote(state["server"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.clip_norm = state["server"]["clip_norm"]
        self._weights = self._server.weights.remote()

    def _reduced(self, refs: list[tuple[str, Any]]) -> list[Any]:
        """The workers' partials, summed per node first when there are node reducers."""
        if not self._reducers:
            return [ref for _, ref in refs]
        by_node: dict[str, list[Any]] = {}
        for node, ref in refs:
            by_node.setdefault(node, []).append(ref)
        return [self._reducers[node].reduce.remote(*group) for node, group in by_node.items()]

    def close(self) -> None:
        """Ends the job's actors (for good: no restart) and releases their resources.

        Idempotent.
        """
        self._backend.close()

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def evaluate(self) -> EvalStats:
        """Evaluates the current weights on the held-out clients, split across the workers."""
        parts = np.array_split(self._eval_ids, self.num_workers)
        refs = [
            worker.evaluate.remote(self._weights, ids)
            for worker, ids in zip(self._workers, parts, strict=True)
            if len(ids)
        ]
        stats: list[EvalStats] = self._from_server(refs, -1)  # the weights come from it
        total = stats[0]
        for other in stats[1:]:
            total.merge(other)
        return total

    def weights(self) -> np.ndarray:
        """The current weights, fetched to the driver."""
        return np.asarray(self._backend.get(self._weights))
