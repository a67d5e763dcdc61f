"""Scores a language model on Secret Sharer secrets and candidates, and their exposure.

A sequence of L + 1 tokens is scored by the model's log-perplexity: the mean next-token negative
log-likelihood (nats) of its last L tokens given the ones before, x = s[:-1], y = s[1:], as in
training. The secrets' ranks among the candidates give their exposure
(`mechanisms.audit.exposure`, Carlini et al. 2019, "The Secret Sharer").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.errors import require
from engine.training.client import begin_client, flat_cross_entropy
from engine.training.models import assign_flat
from mechanisms.audit.exposure import SecretPlan, exposures_by_repetition


def _scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """float64 [n]: mean next-token NLL of each row, full softmax."""
    nll = flat_cross_entropy(model(x), y, reduction="none").reshape(y.shape)
    return nll.to(torch.float64).mean(dim=1).cpu().numpy()


def log_perplexities(
    model: nn.Module, params: torch.Tensor, sequences: np.ndarray, batch: int = 256
) -> np.ndarray:
    """The log-perplexity of each sequence under the model with weights `params`.

    Like `engine.training.client.evaluate`: `params` is assigned to the model (on the model's
    device) and its `begin_client` hook, if any, sees the sequences as one client; then they are
    scored in eval mode without gradients (the model's mode is restored after), `batch`
    sequences at a time, so that logits take batch x L x vocab floats at most.

    A `moe_lm` whose experts drop tokens for capacity scores a sequence depending on the others
    of its batch (capacity is per batch); scoring secrets and candidates in batches of one size
    keeps them comparable.

    Args:
        model: A language model mapping token ids [n, L] to logits [n, L, V].
        params: Its flat parameter vector (`engine.training.models.flatten` order).
        sequences: int64 [n, L + 1] token ids.
        batch: Sequences per forward pass.

    Returns:
        float64 [n]: mean next-token negative log-likelihood (nats) of each sequence.
    """
    require(batch >= 1, "batch", f"must be >= 1, got {batch}")
    tokens = np.asarray(sequences, dtype=np.int64)
    require(
        tokens.ndim == 2 and tokens.shape[1] >= 2,
        "sequences",
        f"must be [n, L + 1] token ids with L >= 1, got shape {tokens.shape}",
    )
    device = next(model.parameters()).device
    assign_flat(model, params.to(device))
    x = torch.from_numpy(tokens[:, :-1].copy()).to(device)  # a writable copy
    y = torch.from_numpy(tokens[:, 1:].copy()).to(device)
    begin_client(model, x, y)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [
                _scores(model, x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)
            ]
    finally:
        model.train(training)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def secret_exposures(
    model: nn.Module,
    params: torch.Tensor,
    plan: SecretPlan,
    secrets: np.ndarray,
    candidates: np.ndarray,
    batch: int = 256,
) -> dict[int, float]:
    """Mean exposure (bits) of the planted secrets by repetition count, under `params`.

    Args:
        model: The trained language model's architecture.
        params: The flat parameters to audit (e.g. the final global model).
        plan: The audit's plan.
        secrets: int64 [S, L + 1], in `plan.counts()` order.
        candidates: int64 [|R|, L + 1], never inserted.
        batch: Sequences per forward pass (`log_perplexities`).

    Returns:
        {repetition count: mean exposure}, see `mechanisms.audit.exposure.exposures_by_repetition`.

    Guarantees:
        None by itself: exposure is an empirical measure of memorisation (Carlini et al. 2019).
        It reads only the released parameters and public randomness (secrets and candidates from
        the seed), so it is post-processing of the release.
    """
    secret_scores = log_perplexities(model, params, secrets, batch)
    candidate_scores = log_perplexities(model, params, candidates, batch)
    return exposures_by_repetition(plan, secret_scores, candidate_scores)
