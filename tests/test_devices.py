"""engine/population/devices.py: per-client compute speed and bandwidth, a function of the id."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from common.errors import ConfigError
from engine.population import DeviceProfiles, LognormalDevices

# Every DeviceProfiles implementation, by seed. Add new ones here.
DEVICES: list[tuple[str, Callable[[int], DeviceProfiles]]] = [
    ("lognormal", lambda seed: LognormalDevices(seed=seed)),
    (
        "lognormal_wide",
        lambda seed: LognormalDevices(seed=seed, sigma_speed=2.0, sigma_bandwidth=2.5),
    ),
    (
        "lognormal_constant",
        lambda seed: LognormalDevices(seed=seed, sigma_speed=0.0, sigma_bandwidth=0.0),
    ),
]


@pytest.fixture(params=[f for _, f in DEVICES], ids=[n for n, _ in DEVICES])
def make_devices(request) -> Callable[[int], DeviceProfiles]:
    return request.param


def _columns(devices: DeviceProfiles) -> list[Callable[[np.ndarray], np.ndarray]]:
    return [devices.seconds_per_example, devices.bandwidth]


IDS = np.array([0, 1, 2, 7, 1000, 123_456, 10**9, 2**40], dtype=np.int64)


# -- contract, every DeviceProfiles ------------------------------------------------------------


def test_contract_positive_finite_float64(make_devices):
    for column in _columns(make_devices(3)):
        for ids in (IDS, np.arange(10_000), np.empty(0, dtype=np.int64)):
            values = column(ids)
            assert isinstance(values, np.ndarray)
            assert values.dtype == np.float64
            assert values.shape == ids.shape
            assert np.all(np.isfinite(values))
            assert np.all(values > 0)


def test_contract_deterministic_per_id(make_devices):
    devices = make_devices(3)
    for column, fresh in zip(_columns(devices), _columns(make_devices(3)), strict=True):
        np.testing.assert_array_equal(column(IDS), column(IDS))
        np.testing.assert_array_equal(column(IDS), fresh(IDS))


def test_contract_independent_of_the_batch(make_devices):
    devices = make_devices(5)
    ids = np.random.default_rng(0).choice(1_000_000, size=2000, replace=False)
    perm = np.random.default_rng(1).permutation(len(ids))
    for column in _columns(devices):
        whole = column(ids)
        np.testing.assert_array_equal(column(ids[perm]), whole[perm])  # order
        np.testing.assert_array_equal(  # batch boundaries
            np.concatenate([column(part) for part in np.array_split(ids, 7)]), whole
        )
        np.testing.assert_array_equal(  # one at a time, and repeated ids
            [column(np.array([i]))[0] for i in ids[:20]], whole[:20]
        )
        np.testing.assert_array_equal(column(np.repeat(ids[:3], 2)), np.repeat(whole[:3], 2))
        np.testing.assert_array_equal(  # the id's integer type does not matter
            column(ids.astype(np.int32)), whole
        )
        np.testing.assert_array_equal(column(ids.tolist()), whole)


# -- LognormalDevices --------------------------------------------------------------------------


def test_lognormal_medians_and_spreads():
    devices = LognormalDevices(
        seed=11,
        median_seconds_per_example=0.2,
        sigma_speed=0.7,
        median_mbps=25.0,
        sigma_bandwidth=1.1,
    )
    ids = np.arange(200_000)
    speed = devices.seconds_per_example(ids)
    bandwidth = devices.bandwidth(ids)
    assert np.median(speed) == pytest.approx(0.2, rel=0.02)
    assert np.median(bandwidth) == pytest.approx(25e6 / 8, rel=0.02)  # bytes per second
    assert np.log(speed).std() == pytest.approx(0.7, rel=0.02)
    assert np.log(bandwidth).std() == pytest.approx(1.1, rel=0.02)
    # log(value / median) / sigma is standard normal.
    sample = slice(0, 20_000)
    z_speed = np.log(speed[sample] / 0.2) / 0.7
    z_bandwidth = np.log(bandwidth[sample] / (25e6 / 8)) / 1.1
    assert stats.kstest(z_speed, "norm").pvalue > 1e-4
    assert stats.kstest(z_bandwidth, "norm").pvalue > 1e-4
    # A client's speed and bandwidth are independent, and so are neighbouring clients.
    assert abs(np.corrcoef(np.log(speed), np.log(bandwidth))[0, 1]) < 0.02
    assert abs(np.corrcoef(np.log(speed[:-1]), np.log(speed[1:]))[0, 1]) < 0.02
    assert abs(np.corrcoef(np.log(bandwidth[:-1]), np.log(speed[1:]))[0, 1]) < 0.02


def test_lognormal_zero_spread_is_the_median():
    devices = LognormalDevices(
        seed=2, median_seconds_per_example=0.05, sigma_speed=0.0, median_mbps=8.0, sigma_bandwidth=0
    )
    np.testing.assert_array_equal(devices.seconds_per_example(IDS), np.full(len(IDS), 0.05))
    np.testing.assert_array_equal(devices.bandwidth(IDS), np.full(len(IDS), 1e6))


def test_lognormal_seeds_differ():
    ids = np.arange(1000)
    a, b = LognormalDevices(seed=0), LognormalDevices(seed=1)
    assert not np.any(a.seconds_per_example(ids) == b.seconds_per_example(ids))
    assert not np.any(a.bandwidth(ids) == b.bandwidth(ids))


def test_lognormal_medians_scale_the_same_draws():
    # Changing a median rescales every client alike: the draws depend on (seed, id) only.
    ids = np.arange(500)
    a = LognormalDevices(seed=4, median_seconds_per_example=0.1, median_mbps=5.0)
    b = LognormalDevices(seed=4, median_seconds_per_example=0.3, median_mbps=20.0)
    np.testing.assert_allclose(b.seconds_per_example(ids), 3 * a.seconds_per_example(ids))
    np.testing.assert_allclose(b.bandwidth(ids), 4 * a.bandwidth(ids))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"median_seconds_per_example": 0.0}, "median_seconds_per_example"),
        ({"median_seconds_per_example": -0.1}, "median_seconds_per_example"),
        ({"sigma_speed": -0.1}, "sigma_speed"),
        ({"median_mbps": 0.0}, "median_mbps"),
        ({"sigma_bandwidth": -1.0}, "sigma_bandwidth"),
    ],
)
def test_lognormal_validation_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        LognormalDevices(**kwargs)
    assert info.value.key == key


def test_lognormal_accepts_the_edges():
    LognormalDevices(seed=0)
    LognormalDevices(seed=2**32 - 1, sigma_speed=0.0, sigma_bandwidth=0.0)
