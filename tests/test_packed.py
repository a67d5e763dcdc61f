"""PackedPartials: a worker's chunk partials travel as one object and arrive unchanged."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import ray
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.aggregation import PackedPartials, Partial
from engine.aggregation.packed import OUT_OF_BAND_BYTES

LARGE = OUT_OF_BAND_BYTES // 4  # float32 values: the smallest array shipped out of band


def _partials(dims: list[int], seed: int) -> list[Partial]:
    rng = np.random.default_rng(seed)
    return [
        Partial(
            rng.standard_normal(dim).astype(np.float32),
            weight_sum=float(rng.uniform()),
            num_clients=int(rng.integers(10)),
            loss_sum=float(rng.uniform()),
            failed=[int(c) for c in rng.integers(0, 99, size=int(rng.integers(3)))],
        )
        for dim in dims
    ]


def _assert_same(got: list[Partial], expected: list[Partial]) -> None:
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert type(mine) is type(theirs)
        np.testing.assert_array_equal(mine.update_sum, theirs.update_sum)
        assert mine.update_sum.dtype == theirs.update_sum.dtype
        for field in ("weight_sum", "num_clients", "loss_sum", "failed", "nonfinite"):
            assert getattr(mine, field) == getattr(theirs, field)


@given(
    dims=st.lists(st.sampled_from([0, 1, 7, 610, LARGE - 1, LARGE]), max_size=6),
    seed=st.integers(0, 999),
)
@settings(max_examples=30, deadline=None)
def test_packed_partials_unpickle_to_the_same_partials_in_order(dims, seed):
    partials = _partials(dims, seed)
    packed = PackedPartials(partials)
    assert len(packed._large) == sum(dim >= LARGE for dim in dims)  # only large arrays apart
    for wire in (pickle.dumps(packed), pickle.dumps(packed, protocol=5)):
        _assert_same(list(pickle.loads(wire)), partials)
    _assert_same(list(packed), partials)
    if partials:
        _assert_same([packed[-1]], partials[-1:])
        _assert_same(list(packed[1:]), partials[1:])


def test_packing_copies_and_pickling_never_carries_the_unpacked_partials():
    partials = _partials([5, 5], seed=0)
    packed = PackedPartials(partials)
    partials[0].update_sum[:] = 0  # packed at construction: later changes do not leak in
    assert np.any(packed[0].update_sum != 0)
    assert "_partials" in packed.__dict__  # read once: cached here ...
    assert "_partials" not in pickle.loads(pickle.dumps(packed)).__dict__  # ... not on the wire


@pytest.mark.usefixtures("ray_session")
def test_packed_partials_survive_the_object_store_with_large_arrays_apart():
    partials = _partials([3, LARGE, 2 * LARGE, 4], seed=1)
    _assert_same(list(ray.get(ray.put(PackedPartials(partials)))), partials)
