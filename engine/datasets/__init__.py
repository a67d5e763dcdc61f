"""Real federated data: in-memory client arrays, partitioners, and file-backed populations.

`DigitsDirichlet` needs scikit-learn and `H5Population` needs h5py; both are imported only when
that population loads its data.
"""

from engine.datasets.arrays import ArrayPopulation, FederatedArrays, Partition
from engine.datasets.digits import DigitsDirichlet
from engine.datasets.femnist import FemnistLikePopulation
from engine.datasets.leaf import LeafPopulation, read_leaf
from engine.datasets.partition import dirichlet_partition, iid_partition, split_clients
from engine.datasets.shakespeare import ShakespearePopulation, read_shakespeare
from engine.datasets.text import ZipfTextPopulation
from engine.datasets.tff_h5 import H5Population, read_h5

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
