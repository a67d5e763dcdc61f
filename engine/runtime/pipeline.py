"""The round pipeline: plan -> chunk -> train -> apply -> commit, one round sent ahead.

One round, as data: the scheduler's plan (cohort ids, simulated times) -> chunks -> one list of
chunk partials per worker -> the server reduces them in chunk order, adds noise, steps the
strategy, and returns the new weights into the object store. The pipeline passes references
only: it never copies model-sized data. Simulated time is the pipeline's, passed to every plan:
`now_s` is where the next round starts, and moves to a round's end when the round commits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.rng import Stream, generator
from engine.plan import Experiment
from engine.population import ClientRegistry
from engine.runtime.chunks import assign, split_chunks
from engine.runtime.pool import ActorPool
from engine.runtime.workers import Receipt
from engine.scheduling import ParticipationLedger, RoundFailedError, RoundPlan, Scheduler
from engine.training import flatten, init_parameters
from mechanisms.clipping import AdaptiveClipping


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


@dataclass(frozen=True)
class SentRound:
    """A round whose chunks are on their way to the workers.

    Attributes:
        plan: The round as planned.
        partials: What the server will sum: the workers' (or node reducers') partials.
        receipts: The workers' `Receipt`s: what the driver itself reads of the round.
    """

    plan: RoundPlan
    partials: list[Any]
    receipts: list[Any]

    def __post_init__(self) -> None:
        if len(self.receipts) < len(self.partials) or not self.receipts:
            raise ValueError("a sent round needs one receipt per worker called, at least one")


class RoundPipeline:
    """Runs rounds on an `ActorPool`: plan, chunk, train, apply, commit.

    Once a round's clients are trained, and before the server has applied them, the round is
    committed to the ledger (which clients failed comes from the workers' small receipts: the
    driver never fetches partials) and the next round is planned and sent to the workers,
    waiting there for the new weights: no round trip to the driver sits between two rounds.
    Not with adaptive clipping, whose server step decides the next round's clip norm.

    Args:
        experiment: The validated experiment.
        scheduler: Plans rounds and commits them to its ledger.
        pool: The started actors.
        registry: The population's registry (each client's example count).
    """

    def __init__(
        self,
        experiment: Experiment,
        scheduler: Scheduler,
        pool: ActorPool,
        registry: ClientRegistry,
    ) -> None:
        self.experiment = experiment
        self.scheduler = scheduler
        self.pool = pool
        self.registry = registry
        self.clip_norm = experiment.clipping.initial_norm
        self.weights = pool.weights()  # a reference to the server's current weights
        self._now_s = scheduler.start_s
        self._pipelined = not isinstance(experiment.clipping, AdaptiveClipping)
        self._pending: SentRound | None = None

    @property
    def now_s(self) -> float:
        """Simulated time at which the next round starts: the last committed round's end.

        A round sent ahead does not move it: only a commit does.
        """
        return self._now_s

    def run_round(self, round_idx: int) -> dict[str, float]:
        """Runs one round and waits for the server to apply it; returns the round's metrics.

        A failure in this round's server step still ends the run before the next round's
        metrics exist. Metrics include `system/train_s` (the slowest worker's training and
        summing), `system/server_s` (the server's step) and `system/overhead_s`: the round's
        wall time above those two, i.e. what Ray and the driver add. (A round sent ahead
        starts training before this call; time the caller spends between rounds hides in it.)
        """
        start = time.perf_counter()
        sent = self._sent_round(round_idx)
        self.weights, stats_ref = self.pool.apply(round_idx, sent.partials)
        receipts: list[Receipt] = self.pool.get(sent.receipts)
        failed = np.sort(np.array([c for receipt in receipts for c in receipt.failed], np.int64))
        clipped = self.clip_norm is not None  # failed clients were summed as zeros
        self.scheduler.commit(sent.plan, exclude=None if clipped else failed)
        self._now_s = sent.plan.end_s
        if self._pipelined:
            self._send_next(round_idx + 1)
        metrics: dict[str, float] = self.pool.from_server(stats_ref, round_idx)
        self._check(sent.plan, metrics, failed, clipped)
        self.clip_norm = metrics.get("privacy/next_clip_norm", self.clip_norm)
        round_s = time.perf_counter() - start
        metrics.update(sent.plan.metrics())
        metrics.update(self._timings(sent.plan, metrics, receipts, round_s))
        return metrics

    def _sent_round(self, round_idx: int) -> SentRound:
        """Round `round_idx` on its way to the workers: sent ahead by the last round, or now.

        A round sent ahead for another round is dropped: planning changed nothing.
        """
        pending, self._pending = self._pending, None
        if pending is not None and pending.plan.round_idx == round_idx:
            return pending
        return self._send(round_idx)

    def _send(self, round_idx: int) -> SentRound:
        """Plans round `round_idx` from `now_s` and sends its chunks off with `self.weights`.

        The weights are a reference: the workers wait for the server to make them.
        """
        plan = self.scheduler.plan(round_idx, self._now_s)
        cohort = plan.cohort
        chunks = split_chunks(cohort, self.experiment.cluster.chunk_size_for(len(cohort)))
        # Chunks go to workers by the counts the clock times (in a private run not the
        # clients' own: with per-node sums, the grouping of float sums must not depend on data).
        examples = [float(self.scheduler.num_examples[chunk].sum()) for chunk in chunks]
        work = assign(chunks, self.pool.num_workers, examples)
        partials, receipts = self.pool.train(self.weights, round_idx, work, self.clip_norm)
        return SentRound(plan, partials, receipts)

    def _send_next(self, round_idx: int) -> None:
        """Sends round `round_idx` ahead, if the run has it.

        A round that cannot be planned is left to `run_round`, which plans it again and raises.
        """
        if round_idx >= self.experiment.rounds:
            return
        try:
            self._pending = self._send(round_idx)
        except RoundFailedError:
            self._pending = None

    @staticmethod
    def _check(
        plan: RoundPlan, metrics: dict[str, float], failed: np.ndarray, clipped: bool
    ) -> None:
        """Raises unless the server aggregated exactly the planned cohort, and not all failed."""
        cohort, round_idx = plan.cohort, plan.round_idx
        summed = metrics["participation/clients_aggregated"]
        if not clipped:  # unclipped, failed and non-finite clients are left out of the sum
            summed += metrics["system/nonfinite_updates"] + len(failed)
        strangers = len(failed) and not np.isin(failed, cohort).all()
        if summed != len(cohort) or strangers:
            raise RuntimeError(f"round {round_idx}: the aggregate is not the planned cohort")
        if len(failed) == len(cohort):
            raise RuntimeError(f"round {round_idx}: every client failed (see the errors above)")

    def _timings(
        self,
        plan: RoundPlan,
        metrics: dict[str, float],
        receipts: list[Receipt],
        round_s: float,
    ) -> dict[str, float]:
        """The round's cohort size in examples, and where its `round_s` of wall time went."""
        cohort = plan.cohort
        train_s = max(receipt.train_s for receipt in receipts)
        return {
            "system/cohort_examples": float(self.registry.num_examples[cohort].sum()),
            "system/round_s": round_s,
            "system/client_updates_per_s": len(cohort) / round_s,
            "system/train_s": train_s,
            "system/overhead_s": round_s - train_s - metrics["system/server_s"],
        }

    def state_dict(self) -> dict[str, Any]:
        """The server's state and the schedule's (the next round's start and the ledger).

        A round sent ahead is not in it: it has not been committed.
        """
        return {
            "server": self.pool.server_state(),
            "scheduler": self.scheduler.state_dict(self._now_s),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()` of a pipeline of the same experiment."""
        self._pending = None
        self.pool.load_server_state(state["server"])
        self._now_s = self.scheduler.load_state_dict(state["scheduler"])
        self.clip_norm = state["server"]["clip_norm"]
        self.weights = self.pool.weights()
