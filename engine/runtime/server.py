"""The parameter server: holds the weights, reduces partials, adds noise, steps the strategy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.aggregation import Aggregator, Partial
from engine.runtime.placement import assigned_device
from mechanisms.audit.canaries import Canaries
from mechanisms.base import Mechanism, NoiseState
from mechanisms.clipping import Clipping
from mechanisms.release import private_mean, released_size
from strategies.base import Strategy


class ParameterServer:
    """Owns the model parameters. Wrapped in `ray.remote` by the driver.

    Args:
        params: Initial flat float32 parameters.
        strategy: Server update rule.
        mechanism: Privacy noise added to each round's total, prepared for the run (the
            server holds its noise state, started here: a secret seed is drawn here).
        aggregator: Reduces the workers' partials.
        clipping: The clip norm schedule; `NoClipping` releases the weighted average as is.
        cohort_size: The public denominator of private averages.
        device: Where the parameters, the strategy's state and the released sums live; None:
            the GPU Ray gave the actor (`cluster.server_gpu`), else the CPU. Partials arrive and
            weights leave as host arrays; the mechanisms draw (and keep) their noise on the
            host, seeded, so a run releases the same values on either device up to float
            rounding.
        canaries: The audit's canaries: the server keeps, per canary and null direction, the
            largest cosine with any round's change of the model (the "all iterates" statistic
            of Andrew et al. 2024), at the cost of one fast Walsh-Hadamard transform per round.
    """

    def __init__(
        self,
        params: np.ndarray,
        strategy: Strategy,
        mechanism: Mechanism,
        aggregator: Aggregator,
        clipping: Clipping,
        cohort_size: int,
        device: str | None = None,
        canaries: Canaries | None = None,
    ) -> None:
        torch.set_num_threads(1)
        self._device = torch.device(device) if device else assigned_device()
        self._params = torch.tensor(params, dtype=torch.float32, device=self._device)
        self._strategy = strategy
        self._state = strategy.init_state(self._params)
        self._mechanism = mechanism
        self._noise = mechanism.init_state(released_size(self._params.numel(), clipping))
        self._aggregator = aggregator
        self._clipping = clipping
        self._cohort_size = cohort_size
        self.clip_norm = clipping.initial_norm
        self._canaries = canaries
        size = canaries.num_canaries if canaries else 0
        self._largest = np.full((2, size), -np.inf)  # per round: observed, null

    def weights(self) -> np.ndarray:
        """The current parameters (Ray stores the returned array once in the object store)."""
        return self._params.cpu().numpy()

    def apply(
        self, round_idx: int, *worker_partials: Sequence[Partial]
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Applies one round: reduce the partials in the order given, release, step.

        The release is `mechanisms.release.private_mean` with clipping (the noisy mean over
        the public cohort size), else the weighted mean. Metrics are everything the server
        knows of the round (`engine.app.metric_keys` declares each key, and the tracker drops the
        clients' statistics from a private run): counts, bytes, the clients' training loss and
        the total's own statistics (`Partial.metrics`), and `privacy/clip_norm` and
        `privacy/next_clip_norm` with clipping.

        Args:
            round_idx: The round being applied.
            *worker_partials: Each worker's list of chunk partials, in chunk order.

        Returns:
            The new weights, and the round's server-side metrics.
        """
        start = time.perf_counter()
        chunks = [partial for partials in worker_partials for partial in partials]
        if any(chunk.clip_norm != self.clip_norm for chunk in chunks):
            raise RuntimeError(f"round {round_idx}: updates clipped to another clip norm")
        total = self._aggregator.reduce(chunks, len(self._params))
        metrics = {
            "participation/clients_aggregated": float(total.num_clients),
            "system/failed_clients": float(len(total.failed)),
            "system/nonfinite_updates": float(len(total.nonfinite)),
            "system/upload_bytes": float(total.upload_bytes),
            "system/transport_bytes": float(sum(chunk.nbytes for chunk in chunks)),
            "train/loss": total.loss_sum / max(total.examples_seen, 1),
            **total.metrics(),
        }
        update = self._release(total, round_idx, metrics)
        if update is not None:
            before = self._params
            self._params, self._state = self._strategy.step(self._params, update, self._state)
            if self._canaries is not None:
                self._track_canaries(self._canaries, self._params - before)
        metrics["system/server_s"] = time.perf_counter() - start
        return self.weights(), metrics

    def largest_cosines(self) -> np.ndarray:
        """The largest cosine of each canary and null direction with a round's model change.

        Returns:
            float64 [2, C]: the canaries (row 0) and the null directions (row 1); -inf before
            the first round, and empty without canaries.
        """
        return self._largest.copy()

    def _track_canaries(self, canaries: Canaries, change: torch.Tensor) -> None:
        observed, null = canaries.cosines(change)
        np.maximum(self._largest, np.stack((observed, null)), out=self._largest)

    def state_dict(self) -> dict[str, Any]:
        """Everything the server's next rounds depend on, on the host (for a checkpoint).

        The parameters, the strategy's state, the mechanism's noise state (its round, seed and
        stored noise, `NoiseState.as_dict`; the noise itself is regenerated from the seed) and
        the clip norm.
        """
        return {
            "params": self._params.cpu().clone(),
            "strategy": {key: value.cpu().clone() for key, value in self._state.items()},
            "mechanism": self._noise.as_dict(),
            "clip_norm": self.clip_norm,
            "largest_cosines": self._largest.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()` of a server of the same configuration.

        The mechanism checks the noise state at the next round (its round, dimension, seed
        and factorisation: see `Mechanism.privatize`).

        Raises:
            ValueError: If the parameters have another size, or the mechanism's state is not a
                noise state of this dimension.
        """
        params, size = state["params"], self._params.numel()
        if params.shape != self._params.shape:
            raise ValueError(f"state has {params.numel()} parameters, the model {size}")
        noise = NoiseState.from_dict(state["mechanism"])
        if noise.dim != self._noise.dim:
            raise ValueError(f"noise state of {noise.dim} coordinates, not {self._noise.dim}")
        self._noise = noise
        self._params = params.to(self._device, torch.float32)
        self._state = {key: value.to(self._device) for key, value in state["strategy"].items()}
        self.clip_norm = state["clip_norm"]
        if "largest_cosines" in state:
            self._largest = np.array(state["largest_cosines"], dtype=np.float64)

    def _release(
        self, total: Partial, round_idx: int, metrics: dict[str, float]
    ) -> torch.Tensor | None:
        """The round's mean update (None when nothing was summed without clipping).

        With clipping: the private mean over the public cohort size; without noise, blocks with
        their own weights (MoE experts) are then re-divided by them. Without clipping (no
        privacy): the weighted mean, each block by its own weight.
        """
        if self.clip_norm is None:
            if total.num_clients == 0:
                return None
            summed, self._noise = self._mechanism.privatize(
                self._on_device(total.dense_sum()), round_idx, self._noise
            )
            return total.rescale(summed / total.weight_sum, total.weight_sum)
        mean, self._noise = private_mean(
            self._on_device(total.dense_sum()),
            total.bit_sum,
            round_idx,
            self._mechanism,
            self._noise,
            self._clipping,
            self.clip_norm,
            self._cohort_size,
        )
        metrics.update(mean.metrics())
        metrics["privacy/next_clip_norm"] = self.clip_norm = mean.next_clip_norm
        if self._mechanism.noise_multiplier == 0:
            return total.rescale(mean.update, self._cohort_size)
        return mean.update

    def _on_device(self, host: np.ndarray) -> torch.Tensor:
        """A float32 host array as a tensor on the server's device (a copy only off the CPU)."""
        return torch.from_numpy(host).to(self._device)
