"""Empirical privacy auditing of a run: canaries and secrets in the build, and their metrics.

The build adds the audit's clients to the population (`audited`): Secret Sharer secrets in the
data of chosen clients, then the canary clients after everyone. The runner asks for the canary
estimate at every evaluation, the last of which the summary keeps (`canary_metrics`), and for
the secrets' exposure at the end (`secret_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from common.errors import require
from common.rng import Stream, generator
from engine.plan import Audit, Experiment
from engine.population import InputKind, Population
from engine.population.canaries import WithCanaries, typical_examples
from engine.population.secrets import WithSecrets
from engine.runtime import Simulation
from engine.training.exposure import secret_exposures
from mechanisms.audit.canaries import Canaries
from mechanisms.audit.estimate import EpsilonEstimate, estimate_epsilon
from mechanisms.audit.exposure import (
    SecretPlan,
    candidate_sequences,
    secret_carriers,
    secret_sequences,
)

# Keys under (seed, AUDIT) of the estimate's bootstrap (the canaries' own streams use 0 and 1,
# the secrets' 2 to 4).
_BOOTSTRAP_KEY = 5


def audited(
    audit: Audit, population: Population, model_factory: Callable[[], nn.Module], seed: int
) -> tuple[Population, Canaries | None]:
    """`population` with the audit's secrets inserted and its canaries appended.

    Raises:
        ConfigError: Secrets without a text population, or more canaries than the model has
            orthogonal directions for.
    """
    if audit.secrets:
        population = _with_secrets(audit, population, seed)
    if not audit.canaries:
        return population, None
    dim = sum(p.numel() for p in model_factory().parameters())
    canaries = Canaries(audit.num_canaries, dim, seed, first_id=population.num_clients)
    examples = typical_examples(population)
    return WithCanaries(population, audit.num_canaries, examples), canaries


def _with_secrets(audit: Audit, population: Population, seed: int) -> Population:
    inputs = type(population).inputs
    require(
        inputs is not None and inputs.kind is InputKind.TOKENS,
        "audit.secrets",
        "secrets need a text population of token sequences (population=zipf_text|shakespeare)",
    )
    plan = _plan(audit)
    carriers = secret_carriers(seed, plan.num_secrets, population.num_clients)
    return WithSecrets(population, _secrets(plan, population, seed), carriers, plan.counts())


def _secrets(plan: SecretPlan, population: Population, seed: int) -> np.ndarray:
    """The run's secrets: one example of the population's format each (seq_len + 1 tokens)."""
    length, vocab = population.num_features + 1, population.num_classes
    return secret_sequences(seed, plan.num_secrets, length, vocab)


def _plan(audit: Audit) -> SecretPlan:
    return SecretPlan(audit.secrets, audit.secrets_per_repetition, audit.num_candidates)


def canary_metrics(experiment: Experiment, sim: Simulation, round_idx: int) -> dict[str, float]:
    """The canary estimates of the model so far and of all its iterates (`audit/...`)."""
    final, largest = sim.canary_cosines()
    metrics = {"audit/num_canaries": float(experiment.audit.num_canaries)}
    for suffix, estimate in _estimates(experiment, final, largest, round_idx).items():
        metrics.update(estimate.as_metrics(suffix=suffix))
    return metrics


def _estimates(
    experiment: Experiment, final: np.ndarray, largest: np.ndarray, round_idx: int
) -> dict[str, EpsilonEstimate]:
    audit, delta = experiment.audit, experiment.privacy.delta
    rng = generator(experiment.seed, Stream.AUDIT, _BOOTSTRAP_KEY, round_idx)
    return {
        suffix: estimate_epsilon(
            cosines[0], cosines[1], delta, rng, audit.bootstrap, audit.confidence
        )
        for suffix, cosines in (("", final), ("_all_iterates", largest))
    }


def secret_metrics(experiment: Experiment, sim: Simulation) -> dict[str, Any]:
    """The secrets' mean exposure by repetition count (`audit/exposure/r<count>`).

    Raises:
        ConfigError: If the run has no secrets (audit.secrets is empty).
    """
    population, plan = experiment.population, _plan(experiment.audit)
    secrets = _secrets(plan, population, experiment.seed)  # drawn again from the seed
    candidates = candidate_sequences(
        experiment.seed, plan.num_candidates, secrets.shape[1], population.num_classes
    )
    model = experiment.model_factory()
    weights = torch.from_numpy(sim.weights().copy())  # writable
    exposures = secret_exposures(model, weights, plan, secrets, candidates)
    metrics: dict[str, Any] = {f"audit/exposure/r{r}": value for r, value in exposures.items()}
    metrics["audit/exposure_max"] = float(np.log2(plan.num_candidates))
    return metrics
