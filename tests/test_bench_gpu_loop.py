"""Smoke test of scripts/bench_gpu_loop.py on the CPU: one line per path, same clients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu_loop.py"


def test_prints_updates_per_second_of_each_path_against_the_torch_loop(capsys):
    threads = torch.get_num_threads()
    try:
        load_script(SCRIPT).main(["--device", "cpu", "--clients", "3", "--repeats", "1"])
    finally:
        torch.set_num_threads(threads)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == ["torch_loop", "fedray_loop", "fedray_vectorised"]
    assert len({line["examples"] for line in lines}) == 1 and lines[0]["clients"] == 3
    for line in lines:
        assert line["client_updates_per_s"] == pytest.approx(3 / line["cohort_s"], rel=0.01)
    assert lines[0]["speedup_vs_torch_loop"] == 1.0


def test_the_torch_loop_trains_as_plain_sgd_does():
    module = load_script(SCRIPT)
    from engine.population import ClientData
    from engine.training import CNN, LocalTraining, flatten, init_parameters

    model = CNN(784, 62)
    init_parameters(model, 0)
    params = torch.from_numpy(flatten(model))
    rng = np.random.default_rng(0)
    data = ClientData(rng.random((4, 784), dtype=np.float32), rng.integers(0, 62, 4))
    training = LocalTraining(batch_size=4, lr=0.1)  # one full-batch step: order does not matter
    delta = module.torch_loop(model, params, [data], training, 0)
    model_copy = CNN(784, 62)
    torch.nn.utils.vector_to_parameters(params.clone(), model_copy.parameters())
    loss = torch.nn.functional.cross_entropy(
        model_copy(torch.from_numpy(data.x)), torch.from_numpy(data.y)
    )
    grads = torch.autograd.grad(loss, list(model_copy.parameters()))
    expected = -0.1 * torch.nn.utils.parameters_to_vector(grads)
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)
