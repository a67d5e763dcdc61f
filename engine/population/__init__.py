"""Who the clients are, their data and devices, and when they are online.

Owns the population (a client is an id; its data is a pure function of the id and the seed),
the data sets under `datasets/` (generated ones and loaders for LEAF JSON, TFF h5, Parquet),
device profiles (compute speed, bandwidth), availability models and interval traces, and
FedScale's trace formats. Imports nothing of the engine above it.
"""

from engine.population.availability import (
    AlwaysAvailable,
    Availability,
    DiurnalAvailability,
    MarkovAvailability,
)
from engine.population.base import (
    ClientData,
    ClientRegistry,
    InputKind,
    Inputs,
    Population,
    SyntheticPopulation,
)
from engine.population.datasets.arrays import ArrayPopulation, FederatedArrays, Partition
from engine.population.datasets.digits import DigitsDirichlet
from engine.population.datasets.femnist import FemnistLikePopulation
from engine.population.datasets.leaf import LeafPopulation
from engine.population.datasets.ratings import RatingsPopulation
from engine.population.datasets.shakespeare import ShakespearePopulation
from engine.population.datasets.text import ZipfTextPopulation
from engine.population.datasets.tff_h5 import H5Population
from engine.population.devices import DeviceProfiles, LognormalDevices
from engine.population.fedscale import FedScaleAvailability, FedScaleDevices
from engine.population.traces import IntervalTraceAvailability

__all__ = [
    "AlwaysAvailable",
    "ArrayPopulation",
    "Availability",
    "ClientData",
    "ClientRegistry",
    "DeviceProfiles",
    "DigitsDirichlet",
    "DiurnalAvailability",
    "FedScaleAvailability",
    "FedScaleDevices",
    "FederatedArrays",
    "FemnistLikePopulation",
    "H5Population",
    "InputKind",
    "Inputs",
    "IntervalTraceAvailability",
    "LeafPopulation",
    "LognormalDevices",
    "MarkovAvailability",
    "Partition",
    "Population",
    "RatingsPopulation",
    "ShakespearePopulation",
    "SyntheticPopulation",
    "ZipfTextPopulation",
]
