"""The parameter server: holds the weights, reduces partials, adds noise, steps the strategy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.aggregation import Aggregator, Partial
from engine.placement import assigned_device
from mechanisms.base import Mechanism
from mechanisms.clipping import Clipping
from strategies.base import Strategy


class ParameterServer:
    """Owns the model parameters. Wrapped in `ray.remote` by the driver.

    Args:
        params: Initial flat float32 parameters.
        strategy: Server update rule.
        mechanism: Privacy noise added to each round's total.
        aggregator: Reduces the workers' partials.
        clipping: The clip norm schedule; `NoClipping` releases the weighted average as is.
        cohort_size: The public denominator of private averages.
        device: Where the parameters, the strategy's state and the released sums live; None:
            the GPU Ray gave the actor (`cluster.server_gpu`), else the CPU. Partials arrive and
            weights leave as host arrays; the mechanisms draw (and keep) their noise on the
            host, seeded, so a run releases the same values on either device up to float
            rounding.
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
    ) -> None:
        torch.set_num_threads(1)
        self._device = torch.device(device) if device else assigned_device()
        self._params = torch.tensor(params, dtype=torch.float32, device=self._device)
        self._strategy = strategy
        self._state = strategy.init_state(self._params)
        self._mechanism = mechanism
        self._aggregator = aggregator
        self._clipping = clipping
        self._cohort_size = cohort_size
        self.clip_norm = clipping.initial_norm

    def weights(self) -> np.ndarray:
        """The current parameters (Ray stores the returned array once in the object store)."""
        return self._params.cpu().numpy()

    def apply(
        self, round_idx: int, *worker_partials: Sequence[Partial]
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Applies one round: reduce partials in the order given, densify, privatize, step.

        Metrics: `system/upload_bytes` (what the clients uploaded, in the aggregator's
        format), `system/transport_bytes` (what the workers' partials carried to the server);
        `train/loss` and the total's own statistics (`Partial.metrics`: rows touched, expert
        load, router entropy). Statistics of the clients' data are not released by a private
        run (noise multiplier > 0): neither are those, nor byte counts that depend on the rows
        or experts touched (sparse and MoE partials; a dense partial's sizes are public).

        `system/failed_clients` counts the clients whose training kept failing (the driver
        reads which from the workers' receipts), `system/rejected_updates` those whose update
        was not finite: neither is in the sum.

        Args:
            round_idx: The round being applied.
            *worker_partials: Each worker's list of chunk partials, in chunk order.

        Returns:
            The new weights, and the round's server-side metrics (with `privacy/clip_norm`, the
            clip norm of the next round, when clipping).
        """
        start = time.perf_counter()
        chunks = [partial for partials in worker_partials for partial in partials]
        if any(chunk.clip_norm != self.clip_norm for chunk in chunks):
            raise RuntimeError(f"round {round_idx}: updates clipped to another clip norm")
        total = self._aggregator.reduce(chunks, len(self._params))
        metrics = {
            "participation/clients_aggregated": float(total.num_clients),
            "system/failed_clients": float(len(total.failed)),
            "system/rejected_updates": float(len(total.rejected)),
        }
        public = self._mechanism.noise_multiplier == 0  # clients' statistics are not privatised
        if public or not any(chunk.size_is_data for chunk in chunks):
            metrics["system/upload_bytes"] = float(total.upload_bytes)
            metrics["system/transport_bytes"] = float(sum(chunk.nbytes for chunk in chunks))
        if public:
            metrics["train/loss"] = total.loss_sum / max(total.examples_seen, 1)
            metrics.update(total.metrics())
        if self.clip_norm is not None:
            update = self._private_average(total, round_idx, self.clip_norm, metrics)
        elif total.num_clients > 0:
            noisy = self._mechanism.privatize(self._on_device(total.dense_sum()), round_idx)
            update = total.rescale(noisy / total.weight_sum, total.weight_sum)
        else:
            update = None
        if update is not None:
            self._params, self._state = self._strategy.step(self._params, update, self._state)
        metrics["system/server_s"] = time.perf_counter() - start
        return self.weights(), metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything the server's next rounds depend on, on the host (for a checkpoint).

        The parameters, the strategy's state, the mechanism's state (its round and stored
        noise; the noise itself is regenerated from the seed) and the clip norm.
        """
        return {
            "params": self._params.cpu().clone(),
            "strategy": {key: value.cpu().clone() for key, value in self._state.items()},
            "mechanism": self._mechanism.state_dict(),
            "clip_norm": self.clip_norm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()` of a server of the same configuration.

        Raises:
            ValueError: If the parameters have another size, or the mechanism's state is of
                another configuration.
        """
        params, size = state["params"], self._params.numel()
        if params.shape != self._params.shape:
            raise ValueError(f"state has {params.numel()} parameters, the model {size}")
        self._mechanism.load_state_dict(state["mechanism"])
        self._params = params.to(self._device, torch.float32)
        self._state = {key: value.to(self._device) for key, value in state["strategy"].items()}
        self.clip_norm = state["clip_norm"]

    def _private_average(
        self, total: Partial, round_idx: int, clip_norm: float, metrics: dict[str, float]
    ) -> torch.Tensor:
        """Privatizes the clipped sum (and the clipping bits) and divides by the cohort size.

        The mechanism sees the whole sum, densified (every coordinate gets noise, touched by a
        client or not), in units of the clip norm. With adaptive clipping the bit sum rides
        along as one more coordinate, scaled so that its noise has standard deviation
        `count_noise_multiplier`, and everything is scaled by z / z_delta so that the updates
        get noise multiplier z_delta (see `AdaptiveClipping`). Without noise, blocks with
        their own weights (MoE experts) are re-divided by them; with noise, the public cohort
        size divides everything.
        """
        z = self._mechanism.noise_multiplier
        z_delta = self._clipping.value_noise_multiplier(z) if z > 0 else 1.0
        scale = z / z_delta if z > 0 else 1.0
        values = self._on_device(total.dense_sum()) * (scale / clip_norm)  # float32, one pass
        count_scale = self._clipping.bit_noise_std
        if count_scale is not None:
            bits = torch.tensor(
                [total.bit_sum * z_delta / count_scale * scale], device=self._device
            )
            values = torch.cat([values, bits])
        released = self._mechanism.privatize(values, round_idx)
        update = released[: len(self._params)].mul_(clip_norm / (scale * self._cohort_size))
        if z == 0:
            update = total.rescale(update, self._cohort_size)
        if count_scale is not None:
            noisy_bits = float(released[-1]) / scale * count_scale / z_delta
            unclipped = noisy_bits / self._cohort_size + 0.5
            clip_norm_next = self._clipping.next_norm(clip_norm, unclipped)
            metrics["privacy/unclipped_fraction"] = unclipped
        else:
            clip_norm_next = clip_norm
        self.clip_norm = clip_norm_next
        metrics["privacy/clip_norm"] = clip_norm
        metrics["privacy/next_clip_norm"] = clip_norm_next
        return update

    def _on_device(self, host: np.ndarray) -> torch.Tensor:
        """A float32 host array as a tensor on the server's device (a copy only off the CPU)."""
        return torch.from_numpy(host).to(self._device)
