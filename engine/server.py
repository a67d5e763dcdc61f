"""The parameter server: holds the weights, reduces partials, adds noise, steps the strategy."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from engine.aggregation import Aggregator, Partial
from mechanisms.base import Mechanism
from strategies.base import Strategy


class ParameterServer:
    """Owns the model parameters. Wrapped in `ray.remote` by the driver.

    Args:
        params: Initial flat float32 parameters.
        strategy: Server update rule.
        mechanism: Privacy noise added to each round's total.
        aggregator: Reduces the workers' partials.
    """

    def __init__(
        self, params: np.ndarray, strategy: Strategy, mechanism: Mechanism, aggregator: Aggregator
    ) -> None:
        torch.set_num_threads(1)
        self._params = torch.tensor(params, dtype=torch.float32)
        self._strategy = strategy
        self._state = strategy.init_state(self._params)
        self._mechanism = mechanism
        self._aggregator = aggregator

    def weights(self) -> np.ndarray:
        """The current parameters (Ray stores the returned array once in the object store)."""
        return self._params.numpy()

    def apply(
        self, round_idx: int, *worker_partials: Sequence[Partial]
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Applies one round: reduce partials in the order given, privatize, average, step.

        Args:
            round_idx: The round being applied.
            *worker_partials: Each worker's list of chunk partials, in chunk order.

        Returns:
            The new weights, and the round's server-side metrics.
        """
        start = time.perf_counter()
        chunks = [partial for partials in worker_partials for partial in partials]
        total = self._aggregator.reduce(chunks, len(self._params))
        if total.num_clients > 0:
            noisy = self._mechanism.privatize(torch.from_numpy(total.update_sum), round_idx)
            update = noisy / total.weight_sum
            self._params, self._state = self._strategy.step(self._params, update, self._state)
        metrics = {
            "train/loss": total.loss_sum / max(total.examples_seen, 1),
            "participation/clients_aggregated": float(total.num_clients),
            "system/server_s": time.perf_counter() - start,
        }
        return self.weights(), metrics
