"""What a run is, once validated: the `Experiment` and its settings sections.

An `Experiment` holds every component of one simulation (population, availability,
participation, clock, devices, model, training, aggregation, strategy, mechanism, clipping)
and the settings sections (evaluation, cluster, privacy, tracking, checkpointing); `validate`
checks that they fit together. The application builds it from a config; the runtime runs it.
"""

from engine.plan.audit import Audit
from engine.plan.experiment import Experiment, validate
from engine.plan.settings import (
    CLUSTER_SPEED_ONLY,
    Checkpointing,
    Cluster,
    Evaluation,
    Privacy,
    Tracking,
)

__all__ = [
    "CLUSTER_SPEED_ONLY",
    "Audit",
    "Checkpointing",
    "Cluster",
    "Evaluation",
    "Experiment",
    "Privacy",
    "Tracking",
    "validate",
]
