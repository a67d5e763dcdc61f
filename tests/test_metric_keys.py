"""The metric registry: declarations, what a private run drops, the docs, wandb's summaries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from common.errors import ConfigError
from engine.app.metric_keys import (
    METRICS,
    SIMULATOR_PREFIXES,
    Metric,
    Release,
    UndeclaredMetricError,
    declared,
    reference,
    releasable,
)
from engine.app.tracking import RunTracker
from engine.plan import Tracking
from tests.audit import RecordingWandb

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def test_the_docs_reference_is_the_registry():
    # Regenerate with: .venv/bin/python -m engine.app.metric_keys > docs/metrics.md
    assert DOCS.read_text(encoding="utf-8") == reference()


def test_every_key_is_declared_once():
    keys = [metric.key for metric in METRICS]
    assert len(keys) == len(set(keys))
    assert all(declared(key).key == key for key in keys)


def test_families_match_by_pattern_and_strangers_fail():
    assert declared("train/expert_load/e3").key == "train/expert_load/e*"
    with pytest.raises(UndeclaredMetricError, match="participation/examples_seen"):
        declared("participation/examples_seen")


def test_a_private_run_drops_the_clients_statistics_and_keeps_the_rest():
    values = {"train/loss": 1.0, "participation/reported": 3.0, "eval/accuracy": 0.5}
    assert releasable(values, private=False) == values
    assert releasable(values, private=True) == {
        "participation/reported": 3.0,
        "eval/accuracy": 0.5,
    }
    with pytest.raises(UndeclaredMetricError):
        releasable({"participation/cohort_examples": 1.0}, private=False)


def test_released_keys_never_live_under_the_simulator_prefixes():
    for metric in METRICS:
        hidden = metric.key.startswith(SIMULATOR_PREFIXES)
        assert not (metric.released and hidden)
        assert hidden or metric.release is not Release.SIMULATOR
    with pytest.raises(ConfigError, match="released ones elsewhere"):
        Metric("system/examples", Release.PUBLIC, "", "round", "")
    with pytest.raises(ConfigError, match="simulator-only keys live under"):
        Metric("participation/round_s", Release.SIMULATOR, "s", "round", "")
    with pytest.raises(ConfigError, match="when"):
        Metric("participation/x", Release.PUBLIC, "", "always", "")


def test_wandb_gets_each_series_summary_rule(tmp_path, monkeypatch):
    recorder = RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", recorder)
    tracking = Tracking(mode="offline", progress=False)
    with RunTracker(tmp_path, tracking, "t", {}, rounds=1, private=True) as tracker:
        logged = tracker.log({"round": 0, "train/loss": 2.0, "participation/reported": 4.0})
    assert logged == {"round": 0, "participation/reported": 4.0}
    rules = {
        args[0]: kwargs.get("summary")
        for kind, (args, kwargs) in (c for c in recorder.calls if c[0] == "define_metric")
    }
    assert rules["eval/accuracy"] == "max" and rules["eval/loss"] == "min"
    assert rules["system/round_s"] == "mean" and rules["*"] is None
    assert ("log", logged) in recorder.calls
