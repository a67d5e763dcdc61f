"""`mechanism.noise_multiplier=auto`: the smallest noise that meets `privacy.target_epsilon`.

The reference is the accountant itself (`planned`, i.e. dp_accounting's RDP and PLD
accountants): the solved noise multiplier must meet the target, and one 1% smaller must not, for
every mechanism (and the tree's options) under every participation policy's declared (k, b).
"""

from __future__ import annotations

import dataclasses

import pytest

from common.errors import ConfigError
from engine.app.build import build_experiment
from mechanisms.accounting import planned
from tests.conftest import compose_config, smoke_experiment

ROUNDS = 24
TARGET = 4.0
MECHANISMS = {
    "gaussian": ("mechanism=gaussian",),
    "tree": ("mechanism=tree",),
    "tree_efficient_restarts": (
        "mechanism=tree",
        "mechanism.efficient=true",
        "mechanism.restart_every=8",
    ),
    "banded_mf": ("mechanism=banded_mf",),
    "blt": ("mechanism=blt",),
}
POLICIES = {
    "uniform": ("participation=uniform",),
    "cyclic": ("participation=cyclic",),
    "min_separation": ("participation=min_separation", "participation.min_separation=5"),
    "max_participations": (
        "participation=max_participations",
        "participation.max_participations=3",
    ),
}


def _auto(*overrides: str, target: float = TARGET) -> tuple[str, ...]:
    return (
        f"rounds={ROUNDS}",
        "participation.cohort_size=20",
        "clipping=fixed",
        "mechanism.noise_multiplier=auto",
        f"privacy.target_epsilon={target}",
        *overrides,
    )


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_the_solved_noise_meets_the_target_and_one_percent_less_does_not(mechanism, policy):
    experiment = smoke_experiment(*_auto(*MECHANISMS[mechanism], *POLICIES[policy]))
    bound, delta = experiment.participation.bound, experiment.privacy.delta
    solved = experiment.mechanism
    assert planned(solved, ROUNDS, bound, delta).epsilon <= TARGET
    smaller = dataclasses.replace(solved, noise_multiplier=0.99 * solved.noise_multiplier)  # type: ignore[type-var]
    assert planned(smaller, ROUNDS, bound, delta).epsilon > TARGET


def test_a_policy_with_a_tighter_bound_needs_less_noise():
    # Cyclic with K = 4 groups declares k = n / 4 and b = 4: less noise than uniform's k = n.
    sigma = {
        policy: smoke_experiment(*_auto("mechanism=gaussian", *overrides)).mechanism
        for policy, overrides in POLICIES.items()
    }
    assert sigma["cyclic"].noise_multiplier < sigma["uniform"].noise_multiplier
    assert sigma["max_participations"].noise_multiplier < sigma["cyclic"].noise_multiplier


def test_adaptive_clipping_keeps_the_solved_total_and_splits_it():
    experiment = smoke_experiment(*_auto("mechanism=gaussian", "clipping=adaptive"))
    z = experiment.mechanism.noise_multiplier
    assert planned(experiment.mechanism, ROUNDS, experiment.participation.bound, 1e-10).epsilon <= (
        TARGET
    )
    # The updates get less than z: the clipping bits spend the rest (Andrew et al. 2019).
    assert experiment.clipping.value_noise_multiplier(z) > z


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("mechanism=gaussian", "privacy.target_epsilon=null"), "mechanism.noise_multiplier"),
        (("mechanism=gaussian", "privacy.target_epsilon=1e-9"), "privacy.target_epsilon"),
        (("mechanism=gaussian", "clipping=adaptive", "privacy.target_epsilon=0.02"), "clipping"),
    ],
)
def test_auto_without_a_target_or_with_an_unmeetable_one_is_a_one_line_error(overrides, key):
    with pytest.raises(ConfigError) as error:
        build_experiment(compose_config("experiment=smoke", *_auto(*overrides)))
    (line,) = str(error.value).splitlines()
    assert line.startswith(f"{key}")


def test_a_noise_multiplier_that_is_neither_a_number_nor_auto_is_refused():
    cfg = compose_config(
        "experiment=smoke", "mechanism=gaussian", "mechanism.noise_multiplier=lots"
    )
    with pytest.raises(ConfigError) as error:
        build_experiment(cfg)
    assert str(error.value) == "mechanism.noise_multiplier: must be a number or 'auto', got 'lots'"


@pytest.mark.parametrize("policy", ["uniform", "cyclic_k8", "max_participations"])
def test_the_policy_study_runs_every_job_at_its_target_epsilon(policy):
    cfg = compose_config("experiment=policy_study", f"participation={policy}", "mechanism=blt")
    experiment, _ = build_experiment(cfg)
    cost = planned(experiment.mechanism, experiment.rounds, experiment.participation.bound, 1e-10)
    assert cfg.privacy.target_epsilon == 8.0
    assert 0.99 * 8.0 < cost.epsilon <= 8.0
