"""GPU paths, run only where CUDA is available (`scripts/gpu_check.sh` runs them on a GPU box).

On a GPU the server keeps its parameters, strategy state and released sums on the device, and a
worker keeps its model there; the results must match the CPU's up to float rounding (the noise
is drawn on the host from the same seed either way). The comparisons turn TF32 off: cuDNN
convolutions use it by default on Ampere and later GPUs, and its 10-bit mantissa moves the
vectorised CNN's update by 1.1% of its norm on an H200 (6e-7 without it), which is not float
rounding.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from engine.aggregation import DenseAggregator
from engine.population import ClientData
from engine.runtime import ParameterServer
from engine.training import (
    CNN,
    ClientUpdate,
    LocalTraining,
    MoETransformerLM,
    flatten,
    init_parameters,
    train_client,
    train_clients,
)
from mechanisms.clipping import FixedClipping
from mechanisms.gaussian import GaussianMechanism
from strategies.fedopt import FedAdam

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _full_float32() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _run_server(device: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    server = ParameterServer(
        np.zeros(1000, np.float32),
        FedAdam(server_lr=0.1),
        GaussianMechanism(noise_multiplier=0.5, seed=1),
        DenseAggregator("uniform"),
        FixedClipping(1.0),
        cohort_size=4,
        device=device,
    )
    weights = server.weights()
    for round_idx in range(3):
        partial = DenseAggregator("uniform").zeros(1000)
        partial.clip_norm = 1.0
        for _ in range(4):
            delta = rng.standard_normal(1000).astype(np.float32) / 100
            partial.add(ClientUpdate(delta, 5, 1.0, 5), 1.0)
        weights, _ = server.apply(round_idx, [partial])
    return weights


def test_server_on_the_gpu_releases_what_the_cpu_releases():
    np.testing.assert_allclose(_run_server("cuda"), _run_server("cpu"), rtol=1e-4, atol=1e-6)


def test_client_training_on_the_gpu_matches_the_cpu():
    model = MoETransformerLM(8, 50, d_model=16, num_heads=2, num_experts=4, expert_hidden=8)
    init_parameters(model, 0)
    params = torch.from_numpy(flatten(model))
    tokens = np.random.default_rng(1).integers(0, 50, (6, 9))
    data = ClientData(x=tokens[:, :-1], y=tokens[:, 1:])
    training = LocalTraining(epochs=1, batch_size=3, lr=0.1)
    deltas = []
    for device in ("cpu", "cuda"):
        update = train_client(model.to(device), params, data, training, np.random.default_rng(2))
        deltas.append(update.delta)
    np.testing.assert_allclose(deltas[1], deltas[0], rtol=1e-3, atol=1e-5)


def test_vectorised_cnn_training_on_the_gpu_matches_the_cpu():
    model = CNN(784, 62)
    init_parameters(model, 0)
    params = torch.from_numpy(flatten(model))
    rng = np.random.default_rng(3)
    datas = [
        ClientData(rng.random((n, 784), dtype=np.float32), rng.integers(0, 62, n))
        for n in (5, 17, 9)
    ]
    training = LocalTraining(epochs=1, batch_size=4, lr=0.05)
    updates = {}
    for device in ("cpu", "cuda"):
        rngs = [np.random.default_rng([1, i]) for i in range(3)]
        updates[device] = train_clients(model.to(device), params.to(device), datas, training, rngs)
    for gpu, cpu in zip(updates["cuda"], updates["cpu"], strict=True):
        np.testing.assert_allclose(gpu.delta, cpu.delta, rtol=1e-3, atol=1e-5)
