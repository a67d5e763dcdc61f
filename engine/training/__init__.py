"""What one client computes: local training, evaluation, the models, injected faults.

Owns the models and their flat parameter vectors (`models/`), one client's local SGD and
evaluation, the vectorised path that trains many clients of one chunk at once, and the
deterministic fault injection that makes a client fail or a worker crash.
"""

from engine.training.client import (
    ClientUpdate,
    EvalStats,
    LocalTraining,
    evaluate,
    evaluate_clients,
    train_client,
)
from engine.training.faults import Faults, InjectedClientError
from engine.training.models.classifiers import CNN, MLP, LogisticRegression
from engine.training.models.layout import ParameterLayout, Span
from engine.training.models.lm import NextWordLM
from engine.training.models.moe import MoETransformerLM
from engine.training.models.params import assign_flat, flatten, init_parameters
from engine.training.models.recommender import ReconstructionMF
from engine.training.vectorised import prefers_vectorised, supports_vectorised, train_clients

__all__ = [
    "CNN",
    "MLP",
    "ClientUpdate",
    "EvalStats",
    "Faults",
    "InjectedClientError",
    "LocalTraining",
    "LogisticRegression",
    "MoETransformerLM",
    "NextWordLM",
    "ParameterLayout",
    "ReconstructionMF",
    "Span",
    "assign_flat",
    "evaluate",
    "evaluate_clients",
    "flatten",
    "init_parameters",
    "prefers_vectorised",
    "supports_vectorised",
    "train_client",
    "train_clients",
]
