"""Server update rules. They see aggregated updates only: no clients, no noise."""

from strategies.base import Strategy, StrategyState
from strategies.dpftrl import DPFTRLM
from strategies.fedavg import FedAvg
from strategies.fedavgm import FedAvgM
from strategies.fedopt import AdaptiveFedOpt, FedAdam, FedYogi

__all__ = [
    "DPFTRLM",
    "AdaptiveFedOpt",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "Strategy",
    "StrategyState",
]
