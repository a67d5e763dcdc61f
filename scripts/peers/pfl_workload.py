"""One benchmark case in pfl-research's simulation (run with the pfl venv's python).

`pfl.algorithm.FederatedAveraging` with the PyTorch backend (`pfl.model.pytorch.PyTorchModel`,
central SGD with learning rate 1, i.e. plain averaging) on a `SimulatedBackend`. The training
data is a `FederatedDataset` whose `make_dataset_fn` builds fedray's client data for a user id,
drawn by `CohortSampler`, `cohort` distinct users per round: fedray's cohorts replayed in order
when the spec carries them, else uniform draws of its own. Each user's examples are shuffled
once, when its dataset is built, by fedray's stream of that client and round
(`peer_common.client_rng`), and its update is reweighted by its example count, so that the
average is FedAvg's weighted one. pfl iterates a user's dataset in the same order every local
epoch, whereas fedray draws a new permutation per epoch: the two compute the same updates for
one local epoch (the benchmark's), not for more. The final model is evaluated centrally on
fedray's held-out clients.

Usage:
    .bench/venv-pfl/bin/python scripts/peers/pfl_workload.py --spec case.json
"""

from __future__ import annotations

from typing import Any

import numpy as np
import peer_common as pc
import torch
from torch import nn


class LossModule(nn.Module):
    """Wraps a fedray model with the `loss` and `metrics` methods pfl's PyTorch backend calls.

    Args:
        inner: The fedray model.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The inner model's logits."""
        result: torch.Tensor = self.inner(x)
        return result

    def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:
        """Mean cross-entropy of the batch (fedray's training loss)."""
        return nn.functional.cross_entropy(self(x), y)

    def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = True) -> dict[str, Any]:
        """Summed loss, as pfl's evaluation expects (unused: evaluation is central)."""
        from pfl.metrics import Weighted

        with torch.no_grad():
            loss = nn.functional.cross_entropy(self(x), y, reduction="sum")
        return {"loss": Weighted(float(loss), len(y))}


class CohortSampler:
    """pfl user sampler: draw k is a user of round k // cohort, each round's users a cohort.

    Given cohorts (fedray's), it replays them: draw k is `cohorts[k // cohort][k % cohort]`.
    Otherwise each round's cohort is drawn uniformly without replacement, as fedray and Flower
    draw theirs (pfl's own samplers either draw with replacement ("random") or cycle through
    the ids in order ("minimize_reuse")). pfl builds a user's dataset right after drawing it, so
    `round_idx` is the round of the user being built.

    Args:
        num_clients: Population size N (ids 0..N-1).
        cohort: Users per round.
        seed: Seed of the draws.
        cohorts: The cohorts to replay, round 0 first; None draws them.

    Attributes:
        round_idx: Round of the latest draw (-1 before the first).
    """

    def __init__(
        self, num_clients: int, cohort: int, seed: int, cohorts: list[list[int]] | None = None
    ) -> None:
        self._num_clients, self._cohort, self._cohorts = num_clients, cohort, cohorts
        self._rng = np.random.default_rng([seed, 1])
        self._draws = 0
        self._current: list[int] = []
        self.round_idx = -1

    def __call__(self) -> int:
        """The next user id."""
        self.round_idx, position = divmod(self._draws, self._cohort)
        if position == 0:
            self._current = self._next_cohort()
        self._draws += 1
        return self._current[position]

    def _next_cohort(self) -> list[int]:
        """The cohort of round `round_idx`.

        Raises:
            RuntimeError: If pfl draws past the last given cohort.
        """
        if self._cohorts is None:
            draw = self._rng.choice(self._num_clients, self._cohort, replace=False)
            return [int(i) for i in draw]
        if self.round_idx >= len(self._cohorts):
            raise RuntimeError(
                f"pfl drew round {self.round_idx}, past the {len(self._cohorts)} given"
            )
        return [int(i) for i in self._cohorts[self.round_idx]]


def _dataset(spec: pc.Spec, population: Any) -> Any:
    """The federated training dataset over user ids 0..N-1, built lazily per user and round."""
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset

    sampler = CohortSampler(spec.num_clients, spec.cohort, spec.seed, spec.cohorts)

    def make_dataset_fn(user_id: int) -> Dataset:
        data = population.client_data(int(user_id))
        rng = pc.client_rng(spec.seed, sampler.round_idx, int(user_id))
        order = rng.permutation(len(data))
        x, y = torch.from_numpy(data.x[order]), torch.from_numpy(data.y[order])
        return Dataset(raw_data=[x, y], user_id=user_id)

    return FederatedDataset(make_dataset_fn, sampler)


def _algorithm() -> Any:
    """FedAvg whose per-user statistics are weighted by example counts."""
    from pfl.algorithm import FederatedAveraging

    class WeightedFedAvg(FederatedAveraging):
        def train_one_user(self, initial: Any, model: Any, dataset: Any, context: Any) -> Any:
            statistics, metrics = super().train_one_user(initial, model, dataset, context)
            statistics.reweight(len(dataset))
            return statistics, metrics

    return WeightedFedAvg()


def _timer_callback(timer: pc.RoundTimer) -> Any:
    """A pfl callback that marks the start and end of every central iteration on `timer`."""
    from pfl.callback.base import TrainingProcessCallback
    from pfl.metrics import Metrics

    class Timing(TrainingProcessCallback):
        def on_train_begin(self, *, model: Any) -> Metrics:
            timer.begin()
            return Metrics()

        def after_central_iteration(
            self, aggregate_metrics: Any, model: Any, *, central_iteration: int
        ) -> tuple[bool, Metrics]:
            timer.end()
            timer.begin()
            return False, Metrics()

    return Timing()


def main() -> None:
    """Runs the case and prints its result line."""
    spec = pc.parse_spec()
    timer = pc.RoundTimer()
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import NNAlgorithmParams
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.model.pytorch import PyTorchModel

    population = pc.build_population(spec)
    module = LossModule(pc.build_model(spec, population))
    model = PyTorchModel(
        model=module,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )
    data = _dataset(spec, population)
    _algorithm().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=spec.rounds,
            evaluation_frequency=spec.rounds + 1,
            train_cohort_size=spec.cohort,
            val_cohort_size=0,
        ),
        backend=SimulatedBackend(training_data=data, val_data=data),
        model=model,
        model_train_params=NNTrainHyperParams(
            local_batch_size=spec.batch_size,
            local_num_epochs=spec.epochs,
            local_learning_rate=spec.lr,
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=None),
        callbacks=[_timer_callback(timer)],
    )
    accuracy = pc.evaluate(module.inner, population, spec.eval_clients)
    pc.emit("pfl", spec, timer, accuracy, pc.versions("pfl", "dp-accounting"))


if __name__ == "__main__":
    main()
