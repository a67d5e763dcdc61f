"""Server update rules. They see aggregated updates only: no clients, no noise."""

from strategies.base import Strategy, StrategyState
from strategies.fedavg import FedAvg

__all__ = ["FedAvg", "Strategy", "StrategyState"]
