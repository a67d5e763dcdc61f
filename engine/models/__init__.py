"""Models trained by the clients, and the flat-vector view of their parameters."""

from engine.models.classifiers import MLP, LogisticRegression
from engine.models.params import assign_flat, flatten, init_parameters

__all__ = ["MLP", "LogisticRegression", "assign_flat", "flatten", "init_parameters"]
