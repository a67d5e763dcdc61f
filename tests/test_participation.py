"""engine/scheduling/participation.py: cohort selection, participation limits and the bound."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

from common.errors import ConfigError
from engine.scheduling import (
    CyclicParticipation,
    ParticipationLedger,
    ParticipationPolicy,
    UniformParticipation,
    participation,
)
from engine.scheduling.participation import sample_accepted
from mechanisms.participation import ParticipationBound
from tests.conftest import compose_config, smoke_experiment

HOUR = 3600.0

# Every ParticipationPolicy implementation, by cohort size: the variants of
# conf/participation/*.yaml. Add new ones here (and their rule to `_eligible_oracle`).
POLICIES: list[tuple[str, Callable[[int], UniformParticipation]]] = [
    ("uniform", lambda size: UniformParticipation(cohort_size=size)),
    ("min_separation", lambda size: UniformParticipation(cohort_size=size, min_separation=10)),
    (
        "max_participations",
        lambda size: UniformParticipation(cohort_size=size, max_participations=1),
    ),
    ("hourly", lambda size: UniformParticipation(cohort_size=size, min_hours=24.0)),
    ("cyclic", lambda size: CyclicParticipation(cohort_size=size, num_groups=4)),
    (
        "cyclic_limited",
        lambda size: CyclicParticipation(
            cohort_size=size, num_groups=3, min_separation=5, max_participations=4
        ),
    ),
]

# The (k, b) each configured variant declares to the accountant.
EXPECTED_BOUNDS = {
    "uniform": ParticipationBound(None, 1),
    "min_separation": ParticipationBound(None, 10),
    "max_participations": ParticipationBound(1, 1),
    "hourly": ParticipationBound(None, 1),  # hours give no round separation
    "cyclic": ParticipationBound(None, 4),
    "cyclic_limited": ParticipationBound(4, 6),  # 3 * ceil(5 / 3)
}


@pytest.fixture(params=[f for _, f in POLICIES], ids=[n for n, _ in POLICIES])
def make_policy(request) -> Callable[[int], UniformParticipation]:
    return request.param


def _mask(num_clients: int, num_available: int, seed: int) -> np.ndarray:
    mask = np.zeros(num_clients, dtype=bool)
    mask[np.random.default_rng(seed).permutation(num_clients)[:num_available]] = True
    return mask


def _check_ids(ids: np.ndarray, allowed: np.ndarray, size: int) -> None:
    """`ids` are sorted distinct int64, all allowed, and as many as `size` allows."""
    assert isinstance(ids, np.ndarray)
    assert ids.dtype == np.int64
    assert ids.ndim == 1
    assert len(ids) == min(size, int(allowed.sum()))
    assert np.all(np.diff(ids) > 0)  # sorted and distinct
    if len(ids):
        assert ids.min() >= 0
        assert ids.max() < len(allowed)
        assert allowed[ids].all()


def _eligible_oracle(
    policy: ParticipationPolicy,
    history: list[tuple[int, float, np.ndarray]],
    round_idx: int,
    t: float,
    num_clients: int,
) -> np.ndarray:
    """Who the policy may select, recomputed from the raw (round, start, ids) history."""
    rounds_of: list[list[int]] = [[] for _ in range(num_clients)]
    start_of = np.full(num_clients, -np.inf)
    for r, start, ids in history:
        for c in ids.tolist():
            rounds_of[c].append(r)
        start_of[ids] = start
    ok = np.ones(num_clients, dtype=bool)
    for c, rounds in enumerate(rounds_of):
        if rounds and round_idx - rounds[-1] < getattr(policy, "min_separation", 1):
            ok[c] = False
        k = getattr(policy, "max_participations", None)
        if k is not None and len(rounds) >= k:
            ok[c] = False
    hours = getattr(policy, "min_hours", None)
    if hours is not None:
        ok &= t - start_of >= hours * HOUR
    if isinstance(policy, CyclicParticipation):
        ok &= np.arange(num_clients) % policy.num_groups == round_idx % policy.num_groups
    return ok


def _history_arrays(history: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, ids) of every selection, ordered by client then round."""
    rounds = np.repeat(np.arange(len(history)), [len(h) for h in history])
    ids = np.concatenate(history) if history else np.empty(0, dtype=np.int64)
    order = np.lexsort((rounds, ids))
    return rounds[order], ids[order]


# -- contract, every ParticipationPolicy -------------------------------------------------------


@pytest.mark.parametrize(
    ("num_clients", "num_available", "cohort_size"),
    [
        (1, 1, 1),
        (10, 10, 3),
        (10, 0, 3),
        (10, 2, 5),  # fewer available than the cohort
        (40, 40, 4),  # a small universe
        (1000, 1000, 20),
        (1000, 900, 20),
        (1000, 30, 10),  # sparse
        (1000, 30, 31),
    ],
)
@pytest.mark.parametrize("over_selection", [None, 1.5])
def test_contract_select(make_policy, num_clients, num_available, cohort_size, over_selection):
    policy = make_policy(cohort_size)
    assert policy.cohort_size == cohort_size
    size = None if over_selection is None else int(over_selection * cohort_size)
    wanted = cohort_size if size is None else size
    ledger = ParticipationLedger(num_clients)
    history: list[tuple[int, float, np.ndarray]] = []
    for round_idx in range(8):
        t = 7 * HOUR * round_idx
        mask = _mask(num_clients, num_available, seed=round_idx)
        before = mask.copy()
        ids = policy.select(round_idx, t, mask, ledger, np.random.default_rng(round_idx), size)
        np.testing.assert_array_equal(mask, before)  # the mask is not modified
        allowed = mask & _eligible_oracle(policy, history, round_idx, t, num_clients)
        _check_ids(ids, allowed, wanted)
        again = make_policy(cohort_size).select(
            round_idx, t, mask, ledger, np.random.default_rng(round_idx), size
        )
        np.testing.assert_array_equal(ids, again)  # deterministic for a fixed rng
        ledger.record(round_idx, t, ids)
        history.append((round_idx, t, ids))


def test_contract_select_does_not_modify_its_inputs(make_policy):
    ledger = ParticipationLedger(500)
    ledger.record(0, 0.0, np.arange(0, 500, 7))
    mask = _mask(500, 400, seed=1)
    saved = mask.copy(), ledger.count.copy(), ledger.last_round.copy(), ledger.min_gap.copy()
    make_policy(50).select(1, 3600.0, mask, ledger, np.random.default_rng(0))
    for now, before in zip(
        (mask, ledger.count, ledger.last_round, ledger.min_gap), saved, strict=True
    ):
        np.testing.assert_array_equal(now, before)
    assert ledger.rounds_recorded == 1


def test_contract_rounds_and_seeds_differ(make_policy):
    policy = make_policy(20)
    mask = np.ones(1000, dtype=bool)
    ledger = ParticipationLedger(1000)
    a = policy.select(0, 0.0, mask, ledger, np.random.default_rng(0))
    b = policy.select(0, 0.0, mask, ledger, np.random.default_rng(1))
    assert not np.array_equal(a, b)


def test_contract_bound(make_policy):
    bound = make_policy(10).bound
    assert isinstance(bound, ParticipationBound)
    assert bound.min_separation >= 1
    assert bound.max_participations is None or bound.max_participations >= 1


@pytest.mark.parametrize(("name", "factory"), POLICIES, ids=[n for n, _ in POLICIES])
def test_configured_variants_declare_their_bound(name, factory):
    assert factory(10).bound == EXPECTED_BOUNDS[name]


@pytest.mark.parametrize("num_clients", [1, 3, 10, 13, 100])
def test_contract_max_cohort_is_what_the_smallest_round_can_choose_from(make_policy, num_clients):
    # A fresh ledger and everyone available: only the round's universe limits the cohort.
    policy = make_policy(1)
    mask = np.ones(num_clients, dtype=bool)
    ledger = ParticipationLedger(num_clients)
    sizes = [
        len(policy.select(r, 0.0, mask, ledger, np.random.default_rng(r), num_clients))
        for r in range(12)
    ]
    assert policy.max_cohort(num_clients) == min(sizes)


@pytest.mark.parametrize(
    ("policy", "num_clients", "expected"),
    [
        (UniformParticipation(cohort_size=5), 1, 1),
        (UniformParticipation(cohort_size=5), 1000, 1000),
        (CyclicParticipation(cohort_size=1, num_groups=4), 10, 2),  # groups of 3, 3, 2, 2
        (CyclicParticipation(cohort_size=1, num_groups=4), 12, 3),
        (CyclicParticipation(cohort_size=1, num_groups=4), 3, 0),  # group 3 is empty
        (CyclicParticipation(cohort_size=1, num_groups=1), 7, 7),
    ],
)
def test_max_cohort_golden(policy, num_clients, expected):
    assert policy.max_cohort(num_clients) == expected


# -- ACCEPTANCE: over 10,000 rounds, the ledger never shows a client beyond (k, b) ---------------

ROUNDS = 10_000


def test_acceptance_ledger_never_exceeds_the_bound(make_policy):
    @given(
        num_clients=st.integers(50, 300),
        cohort_size=st.integers(1, 10),
        k=st.one_of(st.integers(1, 60), st.none()),
        b=st.integers(1, 30),
        availability=st.floats(0.05, 1.0),
        seed=st.integers(0, 2**32 - 1),
    )
    # Tight limits that bind in almost every round, whatever hypothesis draws.
    @example(num_clients=60, cohort_size=8, k=3, b=7, availability=0.5, seed=1)
    @settings(max_examples=3, deadline=None)
    def check(num_clients, cohort_size, k, b, availability, seed):
        policy = dataclasses.replace(
            make_policy(cohort_size), max_participations=k, min_separation=b
        )
        bound = policy.bound
        rng = np.random.default_rng(seed)
        masks = rng.random((ROUNDS, num_clients)) < availability
        starts = np.cumsum(rng.uniform(0.0, 8 * HOUR, ROUNDS))
        ledger = ParticipationLedger(num_clients)
        history: list[np.ndarray] = []
        for r in range(ROUNDS):
            ids = policy.select(r, float(starts[r]), masks[r], ledger, rng)
            ledger.record(r, float(starts[r]), ids)
            history.append(ids)

        assert ledger.check(bound.max_participations, bound.min_separation)
        # Independently, from the raw history rather than the ledger's counters.
        rounds, ids = _history_arrays(history)
        assert len(ids) > 0
        assert masks[rounds, ids].all()  # only available clients
        counts = np.bincount(ids, minlength=num_clients)
        if bound.max_participations is not None:
            assert counts.max() <= bound.max_participations
        same = ids[1:] == ids[:-1]
        gaps = np.diff(rounds)[same]
        assert np.all(gaps >= bound.min_separation)
        if policy.min_hours is not None:
            assert np.all(np.diff(starts[rounds])[same] >= policy.min_hours * HOUR)
        if isinstance(policy, CyclicParticipation):
            assert np.all(ids % policy.num_groups == rounds % policy.num_groups)
        # The ledger agrees with the history.
        seen = ledger.observed()
        assert seen.max_participations == counts.max()
        assert seen.min_separation == (int(gaps.min()) if len(gaps) else None)
        assert seen.contributions == len(ids)
        assert seen.clients == np.count_nonzero(counts)

    check()


# -- cyclic participation ----------------------------------------------------------------------


def test_acceptance_cyclic_only_selects_the_rounds_group():
    policy = CyclicParticipation(cohort_size=7, num_groups=5)
    num_clients = 203
    ledger = ParticipationLedger(num_clients)
    rng = np.random.default_rng(5)
    selected = 0
    for r in range(2000):
        mask = rng.random(num_clients) < rng.uniform(0.1, 1.0)
        ids = policy.select(r, 0.0, mask, ledger, rng)
        assert np.all(ids % 5 == r % 5)
        ledger.record(r, 0.0, ids)
        selected += len(ids)
    assert selected > 2000 * 5  # not vacuous


@pytest.mark.parametrize(
    ("num_groups", "b", "expected"),
    [(4, 1, 4), (4, 4, 4), (4, 5, 8), (4, 6, 8), (4, 9, 12), (1, 5, 5), (3, 7, 9), (7, 2, 7)],
)
def test_cyclic_bound_is_k_times_ceil_b_over_k(num_groups, b, expected):
    policy = CyclicParticipation(
        cohort_size=1, num_groups=num_groups, min_separation=b, max_participations=3
    )
    assert policy.bound == ParticipationBound(3, expected)


@pytest.mark.parametrize(("num_groups", "b"), [(4, 1), (4, 6), (3, 7), (1, 5)])
def test_cyclic_bound_is_met_and_tight(num_groups, b):
    # Groups of two, everyone available, cohort = the group: each client joins as soon as the
    # limits allow, so the realised separation is exactly the declared one.
    num_clients = 2 * num_groups
    policy = CyclicParticipation(cohort_size=2, num_groups=num_groups, min_separation=b)
    ledger = ParticipationLedger(num_clients)
    mask = np.ones(num_clients, dtype=bool)
    rng = np.random.default_rng(0)
    for r in range(10 * policy.bound.min_separation):
        ledger.record(r, 0.0, policy.select(r, 0.0, mask, ledger, rng))
    assert ledger.observed().min_separation == policy.bound.min_separation


@pytest.mark.parametrize("cls", [UniformParticipation, CyclicParticipation])
def test_group_validation_names_the_key(cls):
    with pytest.raises(ConfigError) as info:
        cls(cohort_size=1, num_groups=0)
    assert info.value.key == "num_groups"


def test_uniform_with_k_groups_is_cyclic_participation():
    uniform = UniformParticipation(cohort_size=5, num_groups=4, min_separation=6)
    cyclic = CyclicParticipation(cohort_size=5, num_groups=4, min_separation=6)
    assert uniform.bound == cyclic.bound == ParticipationBound(None, 8)
    assert uniform.max_cohort(103) == cyclic.max_cohort(103) == 25
    mask = np.ones(103, dtype=bool)
    ledgers = ParticipationLedger(103), ParticipationLedger(103)
    for r in range(12):
        picks = [
            policy.select(r, 0.0, mask, ledger, np.random.default_rng(r))
            for policy, ledger in zip((uniform, cyclic), ledgers, strict=True)
        ]
        assert np.array_equal(picks[0], picks[1])
        assert np.all(picks[0] % 4 == r % 4)
        for ledger in ledgers:
            ledger.record(r, 0.0, picks[0])


@pytest.mark.parametrize(
    "policy", ["uniform", "cyclic", "min_separation", "max_participations", "hourly"]
)
def test_every_policy_takes_every_limit_and_a_misspelt_one_still_fails(policy):
    limits = (
        "participation.num_groups=2",
        "participation.min_separation=3",
        "participation.max_participations=4",
        "participation.min_hours=1.5",
    )
    built = smoke_experiment(f"participation={policy}", *limits).participation
    assert isinstance(built, UniformParticipation)
    assert (built.num_groups, built.min_separation, built.max_participations) == (2, 3, 4)
    assert built.min_hours == 1.5
    with pytest.raises(ConfigCompositionException, match="num_grups"):
        compose_config("experiment=smoke", f"participation={policy}", "participation.num_grups=2")


# -- limits ------------------------------------------------------------------------------------


def test_hourly_rule_never_rejoins_within_min_hours():
    policy = UniformParticipation(cohort_size=15, min_hours=24.0)
    num_clients = 100
    ledger = ParticipationLedger(num_clients)
    rng = np.random.default_rng(3)
    starts = np.cumsum(rng.uniform(0.0, 6 * HOUR, 500))
    history = []
    for r, t in enumerate(starts.tolist()):
        ids = policy.select(r, t, rng.random(num_clients) < 0.7, ledger, rng)
        ledger.record(r, t, ids)
        history.append(ids)
    rounds, ids = _history_arrays(history)
    same = ids[1:] == ids[:-1]
    assert same.sum() > 100  # clients do rejoin
    assert np.diff(starts[rounds])[same].min() >= 24 * HOUR


def test_hourly_rule_boundary_is_inclusive():
    policy = UniformParticipation(cohort_size=10, min_hours=24.0)
    ledger = ParticipationLedger(10)
    mask = np.ones(10, dtype=bool)
    rng = np.random.default_rng(0)
    first = policy.select(0, 100.0, mask, ledger, rng)
    np.testing.assert_array_equal(first, np.arange(10))
    ledger.record(0, 100.0, first)
    assert len(policy.select(1, 100.0 + 24 * HOUR - 0.5, mask, ledger, rng)) == 0
    again = policy.select(1, 100.0 + 24 * HOUR, mask, ledger, rng)
    np.testing.assert_array_equal(again, np.arange(10))


def test_min_separation_boundary_is_inclusive():
    # b = 3: a client of round 0 is ineligible in rounds 1 and 2, eligible in round 3.
    policy = UniformParticipation(cohort_size=4, min_separation=3)
    ledger = ParticipationLedger(4)
    mask = np.ones(4, dtype=bool)
    rng = np.random.default_rng(0)
    sizes = []
    for r in range(7):
        ids = policy.select(r, 0.0, mask, ledger, rng)
        ledger.record(r, 0.0, ids)
        sizes.append(len(ids))
    assert sizes == [4, 0, 0, 4, 0, 0, 4]


def test_max_participations_exhausts_the_population():
    policy = UniformParticipation(cohort_size=7, max_participations=2)
    ledger = ParticipationLedger(30)
    mask = np.ones(30, dtype=bool)
    rng = np.random.default_rng(0)
    total = 0
    for r in range(20):
        ids = policy.select(r, 0.0, mask, ledger, rng)
        ledger.record(r, 0.0, ids)
        total += len(ids)
    assert total == 60  # every client exactly twice, then nobody
    assert ledger.count.tolist() == [2] * 30


def test_select_size_zero_selects_nobody(make_policy):
    ledger = ParticipationLedger(100)
    ids = make_policy(5).select(
        0, 0.0, np.ones(100, dtype=bool), ledger, np.random.default_rng(0), 0
    )
    assert len(ids) == 0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"cohort_size": 0}, "cohort_size"),
        ({"cohort_size": -1}, "cohort_size"),
        ({"min_separation": 0}, "min_separation"),
        ({"max_participations": 0}, "max_participations"),
        ({"min_hours": 0.0}, "min_hours"),
        ({"min_hours": -1.0}, "min_hours"),
    ],
)
@pytest.mark.parametrize("cls", [UniformParticipation, CyclicParticipation])
def test_policy_validation_names_the_key(cls, kwargs, key):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert info.value.key == key


# -- performance shape: O(cohort), not O(N) ----------------------------------------------------


class _Recorder:
    """Wraps a Generator and records which of its methods were called."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.rng, name)


_SHAPE_ATTRIBUTES = {"shape", "dtype", "ndim", "size", "itemsize", "nbytes", "flags", "base"}


def _counting(array: np.ndarray, examined: list[int]) -> np.ndarray:
    """A view of `array` that adds to `examined` the elements each read of it touches.

    Indexing counts the elements it returns (as a plain ndarray); any method, numpy function or
    ufunc applied to the whole array counts all of it.
    """

    def plain(x: Any) -> Any:
        return np.ndarray.view(x, np.ndarray) if isinstance(x, Counting) else x

    class Counting(np.ndarray):
        def __getattribute__(self, name: str) -> Any:
            if not name.startswith("_") and name not in _SHAPE_ATTRIBUTES:
                examined.append(int(np.ndarray.__getattribute__(self, "size")))
            return np.ndarray.__getattribute__(self, name)

        def __getitem__(self, index: Any) -> Any:
            out = np.ndarray.__getitem__(plain(self), index)
            examined.append(int(np.size(out)))
            return out

        def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
            examined.append(int(np.ndarray.__getattribute__(self, "size")))
            return getattr(ufunc, method)(*map(plain, inputs), **kwargs)

        def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
            examined.append(int(np.ndarray.__getattribute__(self, "size")))
            return super().__array_function__(func, types, args, kwargs)

    return array.view(Counting)


def test_select_examines_o_cohort_clients_at_scale(make_policy):
    num_clients, cohort = 1_000_000, 1000
    policy = make_policy(cohort)
    ledger = ParticipationLedger(num_clients)
    mask = np.ones(num_clients, dtype=bool)
    rng = np.random.default_rng(0)
    for r in range(3):  # some history, so that the limits have something to read
        ledger.record(r, r * HOUR, policy.select(r, r * HOUR, mask, ledger, rng))
    examined: list[int] = []
    ledger.count = _counting(ledger.count, examined)
    ledger.last_round = _counting(ledger.last_round, examined)
    recorder = _Recorder(np.random.default_rng(1))
    ids = policy.select(
        3, 3 * HOUR, _counting(mask, examined), ledger, cast(np.random.Generator, recorder)
    )
    assert len(ids) == cohort
    assert "choice" not in recorder.calls  # no dense fallback
    # The mask and the ledger were read, but only around the cohort's size, never all N.
    assert cohort <= sum(examined) <= 20 * cohort
    assert max(examined) <= 5 * cohort


def test_sample_accepted_examines_o_size_ids_at_scale():
    universe = range(3, 4_000_000, 4)  # one cyclic group of a population of 4M
    examined: list[int] = []

    def accept(index: Any) -> np.ndarray:
        assert isinstance(index, np.ndarray)  # never the dense slice
        examined.append(len(index))
        return np.asarray(index) % 3 != 0  # two thirds accepted

    ids = sample_accepted(universe, accept, 1000, np.random.default_rng(0))
    assert len(ids) == 1000
    assert np.all(ids % 4 == 3)
    assert np.all(ids % 3 != 0)
    assert 1000 <= sum(examined) <= 5000


# -- sample_accepted ---------------------------------------------------------------------------


@pytest.fixture
def dense_after(monkeypatch: pytest.MonkeyPatch) -> float:
    """Pins the dense-fallback threshold that the path tests below are sized for.

    Uniformity holds at any threshold; pinning it keeps each test on the path it names (the
    rejection draws alone, the dense pass alone, or both) whatever the tuned value is.
    """
    monkeypatch.setattr(participation, "_DENSE_AFTER", 0.25)
    return 0.25


def _accept_mask(mask: np.ndarray) -> Callable[[Any], np.ndarray]:
    return lambda index: mask[index]


def _sample(
    universe: range, mask: np.ndarray, size: int, seed: int | np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    recorder = _Recorder(np.random.default_rng(seed))
    ids = sample_accepted(universe, _accept_mask(mask), size, cast(np.random.Generator, recorder))
    return ids, recorder.calls


@given(
    mask=st.lists(st.booleans(), min_size=0, max_size=300).map(lambda m: np.array(m, dtype=bool)),
    start=st.integers(0, 5),
    step=st.integers(1, 4),
    size=st.integers(0, 120),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=200, deadline=None)
def test_sample_accepted_arbitrary_universes(mask, start, step, size, seed):
    universe = range(start, len(mask), step)
    ids = sample_accepted(universe, _accept_mask(mask), size, np.random.default_rng(seed))
    in_universe = np.zeros(len(mask), dtype=bool)
    in_universe[np.asarray(universe, dtype=np.int64)] = True
    _check_ids(ids, in_universe & mask, size)
    again = sample_accepted(universe, _accept_mask(mask), size, np.random.default_rng(seed))
    np.testing.assert_array_equal(ids, again)


def test_sample_accepted_strided_universe():
    universe = range(2, 4002, 4)
    mask = np.zeros(4002, dtype=bool)
    mask[::3] = True
    for size, seed in itertools.product((1, 10, 100, 400), range(3)):
        ids, _ = _sample(universe, mask, size, seed)
        assert np.all(ids % 4 == 2)
        in_universe = np.zeros(4002, dtype=bool)
        in_universe[2::4] = True
        _check_ids(ids, in_universe & mask, size)


def _reject_all(index: Any) -> np.ndarray:
    if isinstance(index, slice):
        return np.zeros(len(range(index.start, index.stop, index.step)), dtype=bool)
    return np.zeros(len(index), dtype=bool)


@pytest.mark.parametrize("universe", [range(100), range(1, 1_000_000, 7), range(0)])
def test_sample_accepted_nothing_accepted(universe):
    ids = sample_accepted(universe, _reject_all, 10, np.random.default_rng(0))
    assert ids.dtype == np.int64
    assert ids.shape == (0,)


def test_sample_accepted_size_zero_and_empty_universe():
    mask = np.ones(10, dtype=bool)
    for universe, size in ((range(10), 0), (range(0), 5), (range(5, 5), 0)):
        ids = sample_accepted(universe, _accept_mask(mask), size, np.random.default_rng(0))
        assert ids.dtype == np.int64
        assert ids.shape == (0,)


@pytest.mark.parametrize(("num_clients", "accepted"), [(10, 10), (1000, 30), (1000, 900), (50, 1)])
def test_sample_accepted_takes_everyone_when_size_exceeds_the_accepted(num_clients, accepted):
    mask = _mask(num_clients, accepted, seed=accepted)
    ids, _ = _sample(range(num_clients), mask, accepted + 5, 0)
    np.testing.assert_array_equal(ids, np.flatnonzero(mask))


def _inclusion_counts(
    universe: range, mask: np.ndarray, size: int, draws: int, seed: int, path: str
) -> np.ndarray:
    """Inclusion counts over `draws` samples, each of which must have taken `path`."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(mask), dtype=np.int64)
    for _ in range(draws):
        ids, calls = _sample(universe, mask, size, rng)
        _check_path(calls, path)
        counts[ids] += 1
    return counts


def _check_path(calls: list[str], path: str) -> None:
    if path == "rejection":
        assert "integers" in calls and "choice" not in calls
    elif path == "dense":
        assert "choice" in calls and "integers" not in calls
    else:  # "any": rejection first, possibly finished by the dense fallback
        assert "integers" in calls or "choice" in calls


def test_sample_accepted_inclusion_is_uniform_on_the_rejection_path(dense_after):
    mask = _mask(400, 360, seed=3)
    size, draws = 10, 4000
    counts = _inclusion_counts(range(400), mask, size, draws, seed=2024, path="rejection")
    assert counts[~mask].sum() == 0
    assert counts[mask].sum() == size * draws
    # Each accepted id joins with probability size / 360.
    assert stats.chisquare(counts[mask]).pvalue > 1e-4


def test_sample_accepted_inclusion_is_uniform_on_a_strided_universe(dense_after):
    universe = range(1, 1600, 4)  # 400 ids, the group 1 mod 4
    mask = np.zeros(1600, dtype=bool)
    mask[universe.start :: 4] = True
    mask[::5] = False  # 320 of the group accepted
    counts = _inclusion_counts(universe, mask, 8, 4000, seed=17, path="rejection")
    group = np.zeros(1600, dtype=bool)
    group[universe.start :: 4] = True
    assert counts[~(mask & group)].sum() == 0
    assert stats.chisquare(counts[mask & group]).pvalue > 1e-4


def test_sample_accepted_inclusion_is_uniform_on_the_dense_path(dense_after):
    # A small universe is drawn densely from the start.
    mask = _mask(40, 30, seed=5)
    counts = _inclusion_counts(range(40), mask, 8, 3000, seed=11, path="dense")
    assert counts[~mask].sum() == 0
    assert stats.chisquare(counts[mask]).pvalue > 1e-4


def test_sample_accepted_inclusion_is_uniform_on_the_fallback_path(dense_after):
    # 2% accepted: rejection draws come back nearly empty and the dense fallback finishes.
    mask = _mask(1000, 20, seed=5)
    rng = np.random.default_rng(11)
    counts = np.zeros(1000, dtype=np.int64)
    fallback = 0
    for _ in range(3000):
        ids, calls = _sample(range(1000), mask, 5, rng)
        assert "integers" in calls  # rejection draws first
        fallback += "choice" in calls
        counts[ids] += 1
    assert fallback > 2500  # nearly always finished by the dense fallback
    assert counts[~mask].sum() == 0
    assert stats.chisquare(counts[mask]).pvalue > 1e-4


def _pair_counts(
    universe: range, mask: np.ndarray, draws: int, seed: int, path: str
) -> tuple[np.ndarray, list[list[str]]]:
    accepted = np.flatnonzero(mask)
    accepted = accepted[np.isin(accepted, np.asarray(universe))]
    pairs = {p: i for i, p in enumerate(itertools.combinations(accepted.tolist(), 2))}
    counts = np.zeros(len(pairs), dtype=np.int64)
    rng = np.random.default_rng(seed)
    all_calls = []
    for _ in range(draws):
        ids, calls = _sample(universe, mask, 2, rng)
        _check_path(calls, path)
        all_calls.append(calls)
        a, b = ids.tolist()
        counts[pairs[(a, b)]] += 1
    return counts, all_calls


def test_sample_accepted_subsets_are_uniform_on_the_rejection_path(dense_after):
    # All C(70, 2) = 2415 pairs of the accepted ids are equally likely.
    mask = np.ones(76, dtype=bool)
    mask[[3, 17, 30, 44, 58, 75]] = False
    counts, _ = _pair_counts(range(76), mask, 15_000, seed=7, path="rejection")
    assert len(counts) == 2415
    assert stats.chisquare(counts).pvalue > 1e-4


def test_sample_accepted_subsets_are_uniform_on_the_dense_path(dense_after):
    mask = np.array([1, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    counts, _ = _pair_counts(range(8), mask, 6000, seed=7, path="dense")
    assert stats.chisquare(counts).pvalue > 1e-4


def test_sample_accepted_subsets_are_uniform_on_the_fallback_path(dense_after):
    # 6 of 200 accepted: the first pick often comes from the rejection draws and the second
    # from the dense fallback; the pair must stay uniform over all C(6, 2) = 15.
    mask = np.zeros(200, dtype=bool)
    mask[[4, 50, 51, 120, 160, 199]] = True
    counts, calls = _pair_counts(range(200), mask, 6000, seed=9, path="any")
    both = sum("integers" in c and "choice" in c for c in calls)
    assert both > 1000  # the mixed path is well exercised
    assert stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize(("accepted", "size"), [(1500, 10), (100, 5), (12, 3)])
def test_sample_accepted_inclusion_is_uniform_at_the_tuned_threshold(accepted, size):
    # Whatever path the module's own threshold picks.
    mask = _mask(2000, accepted, seed=accepted)
    rng = np.random.default_rng(accepted)
    draws = max(1000, 10 * accepted // size)
    counts = np.zeros(2000, dtype=np.int64)
    for _ in range(draws):
        counts[sample_accepted(range(2000), _accept_mask(mask), size, rng)] += 1
    assert counts[~mask].sum() == 0
    assert counts.sum() == size * draws
    assert stats.chisquare(counts[mask]).pvalue > 1e-4


def test_sample_accepted_passes_ids_or_a_slice_to_accept(dense_after):
    seen: list[type] = []
    mask = _mask(1000, 5, seed=1)  # too few for the rejection draws alone

    def accept(index: Any) -> np.ndarray:
        seen.append(type(index))
        if isinstance(index, np.ndarray):
            assert index.dtype == np.int64
        return mask[index]

    sample_accepted(range(1000), accept, 5, np.random.default_rng(0))
    assert np.ndarray in seen and slice in seen


# -- ParticipationBound ------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "b"), [(None, 1), (1, 1), (5, 3), (100, 1000)])
def test_bound_accepts_valid_values(k, b):
    bound = ParticipationBound(max_participations=k, min_separation=b)
    assert bound.max_participations == k
    assert bound.min_separation == b


@pytest.mark.parametrize(
    ("k", "b", "key"),
    [(0, 1, "max_participations"), (-2, 1, "max_participations"), (None, 0, "min_separation")],
)
def test_bound_validation_names_the_key(k, b, key):
    with pytest.raises(ConfigError) as info:
        ParticipationBound(max_participations=k, min_separation=b)
    assert info.value.key == key
