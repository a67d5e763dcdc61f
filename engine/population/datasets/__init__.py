"""Real federated data: in-memory client arrays, partitioners, and file-backed populations.

`DigitsDirichlet` needs scikit-learn and `H5Population` needs h5py; both are imported only when
that population loads its data.
"""

from engine.population.datasets.arrays import ArrayPopulation, FederatedArrays, Partition
from engine.population.datasets.digits import DigitsDirichlet
from engine.population.datasets.femnist import FemnistLikePopulation
from engine.population.datasets.leaf import LeafPopulation, read_leaf
from engine.population.datasets.partition import dirichlet_partition, iid_partition, split_clients
from engine.population.datasets.shakespeare import ShakespearePopulation, read_shakespeare
from engine.population.datasets.text import ZipfTextPopulation
from engine.population.datasets.tff_h5 import H5Population, read_h5

__all__ = [
    "ArrayPopulation",
    "DigitsDirichlet",
    "FederatedArrays",
    "FemnistLikePopulation",
    "H5Population",
    "LeafPopulation",
    "Partition",
    "ShakespearePopulation",
    "ZipfTextPopulation",
    "dirichlet_partition",
    "iid_partition",
    "read_h5",
    "read_leaf",
    "read_shakespeare",
    "split_clients",
]
