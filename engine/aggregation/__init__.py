"""Aggregation: how client updates are weighted and summed into partial aggregates.

Three aggregators share one interface (`Aggregator`), chosen with `aggregation=dense|sparse|moe`:
dense sums (FedAvg), row-sparse sums for embedding-like parameters, and per-expert sums for
mixtures of experts. They differ in what travels and what is held, never in what the server
releases under DP: the server densifies the total before it adds noise.
"""

from engine.aggregation.base import WEIGHTINGS, Aggregator, DenseAggregator, Partial
from engine.aggregation.moe import MoEAggregator, MoEPartial
from engine.aggregation.packed import PackedPartials
from engine.aggregation.secure import ModularPartial, SecureAggregator
from engine.aggregation.sparse import SparseAggregator, SparsePartial

__all__ = [
    "WEIGHTINGS",
    "Aggregator",
    "DenseAggregator",
    "MoEAggregator",
    "MoEPartial",
    "ModularPartial",
    "PackedPartials",
    "Partial",
    "SecureAggregator",
    "SparseAggregator",
    "SparsePartial",
]
