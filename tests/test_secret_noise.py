"""Secret noise: a 128-bit seed from the OS, never logged, kept in the checkpoint only."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import engine.app.runner
from engine.app.build import as_dict, build_experiment
from engine.app.checkpoint import FILE_NAME, load
from engine.app.run import checkpoint_to_resume
from engine.app.runner import run_experiment
from engine.plan import Experiment, Tracking
from engine.runtime import LocalBackend
from mechanisms.banded import BandedMechanism
from mechanisms.base import SECRET_SEED_BITS, NoiseSeed, NoiseState
from mechanisms.blt import BltMechanism
from mechanisms.gaussian import GaussianMechanism
from mechanisms.tree import TreeMechanism
from tests.audit import RecordingWandb
from tests.conftest import compose_config

SECRET = (
    "experiment=smoke",
    "rounds=4",
    "checkpoint.every=2",
    "mechanism=blt",
    "mechanism.noise_seed=secret",
    "participation=cyclic",
    "participation.num_groups=2",
)
MECHANISMS = (
    lambda kind: GaussianMechanism(noise_seed=kind),
    lambda kind: TreeMechanism(noise_seed=kind),
    lambda kind: BandedMechanism(noise_seed=kind, bands=2).prepare(6, 2, 3),
    lambda kind: BltMechanism(noise_seed=kind).prepare(6, 2, 3),
)


@pytest.mark.parametrize("make", MECHANISMS)
def test_secret_noise_differs_between_streams_and_continues_from_the_state(make):
    mechanism = make("secret")
    assert mechanism == make("secret")  # the mechanism holds no secret: its streams do
    totals = torch.zeros(3, 50)
    first, second = mechanism.init_state(50), mechanism.init_state(50)
    a, first = mechanism.privatize(totals[0], 0, first)
    b, second = mechanism.privatize(totals[0], 0, second)
    assert not torch.equal(a, b)  # P(equal seeds) = 2^-128
    _, first = mechanism.privatize(totals[1], 1, first)
    saved = first.as_dict()
    assert 0 <= saved["seed"] < 2**SECRET_SEED_BITS
    assert str(saved["seed"]) not in repr(mechanism) + repr(first)
    resumed = make("secret")  # another instance continues the stream of the state
    expected, _ = mechanism.privatize(totals[2], 2, first)
    continued, _ = resumed.privatize(totals[2], 2, NoiseState.from_dict(saved))
    torch.testing.assert_close(continued, expected)


def test_seeded_noise_refuses_a_state_of_another_seed_and_secret_needs_one():
    seeded = NoiseSeed(3, "seeded")
    assert seeded.draw() == 3
    seeded.check(3)
    with pytest.raises(ValueError, match="another noise seed") as error:
        seeded.check(2**100 + 4)
    assert str(2**100 + 4) not in str(error.value)
    with pytest.raises(ValueError, match="no secret noise seed"):
        NoiseSeed(0, "secret").check("3")
    with pytest.raises(ValueError, match="noise_seed: must be one of"):
        NoiseSeed(0, "random")
    with pytest.raises(ValueError, match="seed"):
        GaussianMechanism(noise_seed="secret").privatize(
            torch.zeros(2), 0, NoiseState(0, 2, 2**SECRET_SEED_BITS)
        )


def _experiment() -> tuple[Experiment, dict[str, Any]]:
    cfg = compose_config(*SECRET)
    experiment, _ = build_experiment(cfg)
    return experiment, as_dict(cfg)


def _run(out: Path, resume: bool = False) -> dict[str, Any]:
    experiment, config = _experiment()
    checkpoint = checkpoint_to_resume(str(out), config) if resume else None
    tracking = Tracking(mode="offline", progress=False, participation_log=True)
    path = run_experiment(
        experiment, tracking, out, config, "sha", resume=checkpoint, backend=LocalBackend()
    )
    return json.loads(path.read_text())


def test_a_secret_run_resumes_exactly_and_logs_its_seed_nowhere(tmp_path, monkeypatch):
    recorder = RecordingWandb()  # what wandb would be handed
    monkeypatch.setitem(sys.modules, "wandb", recorder)
    save, snapshot = engine.app.runner.save, tmp_path / "after_round_2"

    def save_and_keep_the_first(checkpoint: Any, output_dir: Path) -> Path:
        path = save(checkpoint, output_dir)
        if checkpoint.rounds_done == 2 and output_dir.name == "whole":
            snapshot.mkdir()
            shutil.copy(path, snapshot / FILE_NAME)
        return path

    monkeypatch.setattr(engine.app.runner, "save", save_and_keep_the_first)
    whole = _run(tmp_path / "whole")
    other = _run(tmp_path / "other")
    assert whole["model_sha256"] != other["model_sha256"]  # fresh secret noise
    resumed = _run(snapshot, resume=True)
    assert resumed["model_sha256"] == whole["model_sha256"]
    checkpoint = load(tmp_path / "whole")
    assert checkpoint is not None
    seed = checkpoint.server["mechanism"]["seed"]
    assert seed >= 2**32  # a 128-bit number, not the config's seed (P(< 2^32) = 2^-96)
    forms = (str(seed), f"{seed:x}", f"{seed:X}", seed.to_bytes(16, "little"))
    for path in (tmp_path / "whole").rglob("*"):
        if path.is_file() and path.name != FILE_NAME:
            content = path.read_bytes()
            assert not any(_in(form, content) for form in forms), path
    handed = repr(recorder.calls).encode()
    assert not any(_in(form, handed) for form in forms)
    assert "secret" in json.dumps(_experiment()[1]["mechanism"])  # the config says only that


def _in(form: str | bytes, content: bytes) -> bool:
    return (form.encode() if isinstance(form, str) else form) in content
