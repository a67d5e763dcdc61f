"""The distributed-DP encoder and decoder: rotation, conditional rounding, modular sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import hadamard

from common.errors import ConfigError
from mechanisms.ddp import (
    CodecSpec,
    add_mod,
    centred,
    conditional_round,
    decode,
    encode_chunk,
    inflated_norm_bound,
    padded_dim,
    rotate,
    rotation_signs,
    unrotate,
    wrapped_coordinates,
)

BETA = math.exp(-0.5)


def test_padded_dim() -> None:
    assert [padded_dim(d) for d in (1, 2, 3, 4, 5, 1000, 1024, 1025)] == [
        1,
        2,
        4,
        4,
        8,
        1024,
        1024,
        2048,
    ]
    with pytest.raises(ConfigError, match="dim"):
        padded_dim(0)


@pytest.mark.parametrize("log2", range(12))
def test_rotation_is_the_normalised_hadamard_matrix(log2: int) -> None:
    padded = 1 << log2
    signs = rotation_signs(7, 3, padded)
    dim = max(1, padded - 3)
    x = torch.randn(3, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(log2))
    padded_x = np.zeros((3, padded))
    padded_x[:, :dim] = x.numpy()
    expected = (padded_x * signs.numpy()) @ hadamard(padded) / math.sqrt(padded)
    np.testing.assert_allclose(rotate(x, signs).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("dim", [1000, 1024])
def test_rotation_in_a_stale_workspace_is_the_same_rotation(dim: int) -> None:
    from mechanisms.ddp.rotation import rotate_raw

    signs = rotation_signs(1, 0, 1024)
    x = torch.randn(3, dim, generator=torch.Generator().manual_seed(dim))
    workspace = torch.full((2, 5, 1024), float("nan"))  # more rows than x, left over from before
    assert torch.equal(rotate_raw(x, signs, workspace), rotate_raw(x, signs))


def test_signs_are_public_per_round() -> None:
    first = rotation_signs(5, 2, 256)
    assert first.dtype == torch.float32
    assert set(first.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(first, rotation_signs(5, 2, 256))
    assert not torch.equal(first, rotation_signs(5, 3, 256))
    assert not torch.equal(first, rotation_signs(6, 2, 256))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 4),
    dim=st.integers(1, 300),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_rotate_round_trip_and_norm(n: int, dim: int, dtype: torch.dtype, seed: int) -> None:
    signs = rotation_signs(seed, 0, padded_dim(dim))
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)).to(dtype)
    y = rotate(x, signs)
    assert y.shape == (n, padded_dim(dim))
    assert y.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), rtol=tol, atol=tol)
    torch.testing.assert_close(unrotate(y, signs, dim), x, rtol=tol, atol=tol)


def test_inflated_norm_bound_golden() -> None:
    # c = 100, d = 1024, beta = e^-1/2: sqrt(10000 + 256 + 1 * (100 + 16)) < 100 + 32.
    assert inflated_norm_bound(100.0, 1024, BETA) == pytest.approx(math.sqrt(10372.0))
    assert inflated_norm_bound(100.0, 1024, 0.0) == 132.0
    # A tiny beta: the deterministic c + sqrt(d) is the smaller one.
    assert inflated_norm_bound(0.0, 1, 1e-300) == 1.0
    with pytest.raises(ValueError):
        inflated_norm_bound(1.0, 4, 1.0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5),
    dim=st.integers(1, 64),
    clip=st.floats(0.0, 50.0),
    slack=st.floats(-0.4, 1.0),
    seed=st.integers(0, 2**16),
)
def test_conditional_round_never_exceeds_the_bound(
    n: int, dim: int, clip: float, slack: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, dtype=torch.float64, generator=gen)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) * clip
    # From tighter than the paper's bound (retries) to the bound itself.
    bound = inflated_norm_bound(clip, dim, BETA) + slack * math.sqrt(dim) / 2
    try:
        rounded, retries = conditional_round(x, bound, gen, max_tries=200)
    except RuntimeError as error:
        assert "rows still exceed" in str(error)
        return
    assert rounded.dtype == torch.int64
    assert retries.shape == (n,)
    assert ((rounded - x).abs() < 1).all()
    assert all(int((row * row).sum()) <= bound * bound for row in rounded)


def test_conditional_round_is_unbiased() -> None:
    x = torch.tensor([[0.1, -0.3, 2.5, -7.75, 0.0, 3.0, 0.9, -0.01]], dtype=torch.float64)
    rows = x.repeat(40_000, 1)
    bound = inflated_norm_bound(float(x.norm()), 8, BETA)
    rounded, _ = conditional_round(rows, bound, torch.Generator().manual_seed(1))
    mean = rounded.double().mean(dim=0)
    frac = x[0] - x[0].floor()
    se = (frac * (1 - frac) / rows.shape[0]).sqrt()
    assert ((mean - x[0]).abs() <= 5 * se + 1e-12).all()


def test_conditional_round_checks_exactly_in_integers() -> None:
    gen = torch.Generator().manual_seed(0)
    for shift in (0, 26, 40):  # the float64, int64 and Python-integer paths
        x = torch.tensor([[3.0 * 2**shift, 4.0 * 2**shift]], dtype=torch.float64)
        bound = 5.0 * 2**shift
        rounded, retries = conditional_round(x, bound, gen)
        assert rounded.tolist() == [[3 * 2**shift, 4 * 2**shift]]
        assert retries.tolist() == [0]
        with pytest.raises(RuntimeError, match="1 rows still exceed"):
            conditional_round(x, math.nextafter(bound, 0.0), gen, max_tries=3)


def test_conditional_round_counts_retries() -> None:
    # Norm sqrt(8 * 0.25) = 1.41 before rounding; bound 1.5 passes only roundings with <= 2 ones.
    x = torch.full((200, 8), 0.5, dtype=torch.float64)
    rounded, retries = conditional_round(x, 1.5, torch.Generator().manual_seed(3))
    assert (rounded.sum(dim=1) <= 2).all()
    assert retries.sum() > 0
    # P(at most 2 of 8 fair coins) = 37 / 256: about 6 retries per row.
    assert retries.double().mean().item() == pytest.approx(256 / 37 - 1, rel=0.25)


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(2, 62), data=st.data())
def test_add_mod(bits: int, data: st.DataObject) -> None:
    m = 1 << bits
    values = st.lists(st.integers(0, m - 1), min_size=3, max_size=3)
    a, b = data.draw(values), data.draw(values)
    got = add_mod(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), bits)
    assert got.dtype == np.int64
    assert got.tolist() == [(x + y) % m for x, y in zip(a, b, strict=True)]


def test_centred_and_wrapped_coordinates() -> None:
    assert centred(np.array([0, 7, 8, 15]), 4).tolist() == [0, 7, -8, -1]
    assert wrapped_coordinates(np.array([-9.0, -8.0, 7.0, 7.5, 8.0, 100.0]), 4) == 3
    assert wrapped_coordinates(torch.tensor([0.0, -8.5]), 4) == 1


def spec(**overrides: object) -> CodecSpec:
    base: dict[str, object] = dict(
        bits=40, scale=1000.0, norm_bound=1.0, noise="gaussian", local_noise=0.0, dim=50
    )
    base.update(overrides)
    if "norm_bound" not in overrides:
        base["norm_bound"] = inflated_norm_bound(
            float(base["scale"]),  # type: ignore[arg-type]
            padded_dim(int(base["dim"])),  # type: ignore[call-overload]
            BETA,
        )
    return CodecSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bits", 1),
        ("bits", 63),
        ("scale", 0.0),
        ("norm_bound", float("inf")),
        ("noise", "laplace"),
        ("local_noise", -1.0),
        ("dim", 0),
    ],
)
def test_codec_spec_validates(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as error:
        spec(**{key: value})
    assert error.value.key == key


def clipped(n: int, dim: int, seed: int, clip: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    return x / x.norm(dim=1, keepdim=True) * clip * torch.rand(n, 1, generator=gen)


def rngs(seed: int, round_idx: int, clients: range) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, round_idx, c]) for c in clients]


def test_decode_without_noise_is_the_sum_up_to_rounding() -> None:
    s = spec()
    n = 12
    updates = clipped(n, s.dim, 1)
    signs = rotation_signs(0, 4, s.padded)
    encoding = encode_chunk(updates, signs, s, rngs(0, 4, range(n)))
    assert encoding.clients == n
    assert encoding.total.dtype == np.int64
    assert ((encoding.total >= 0) & (encoding.total < s.modulus)).all()
    released = decode(encoding.total, signs, s)
    assert released.dtype == torch.float32 and released.shape == (s.dim,)
    # Each client's rounding moves each of d' rotated coordinates by < 1 / s.
    error = (released.double() - updates.double().sum(0)).norm().item()
    assert error <= n * math.sqrt(s.padded) / s.scale
    assert error > 0


@pytest.mark.parametrize(("noise", "local"), [("gaussian", 3.0), ("skellam", 9.0)])
def test_the_modular_sum_does_not_depend_on_the_chunking(noise: str, local: float) -> None:
    # 6 bits and a large scale: the sum wraps around, the chunking still cannot show.
    s = spec(bits=6, scale=100.0, noise=noise, local_noise=local, dim=40)
    n = 8
    updates = clipped(n, s.dim, 2)
    signs = rotation_signs(1, 9, s.padded)
    totals = []
    for chunks in (1, 2, 4):
        total = np.zeros(s.padded, dtype=np.int64)
        for part in np.array_split(np.arange(n), chunks):
            ids = range(int(part[0]), int(part[-1]) + 1)
            encoding = encode_chunk(updates[part], signs, s, rngs(1, 9, ids), wide=True)
            total = add_mod(total, encoding.total, s.bits)
        totals.append(total)
    assert np.array_equal(totals[0], totals[1])
    assert np.array_equal(totals[0], totals[2])
    whole = encode_chunk(updates, signs, s, rngs(1, 9, range(n)), wide=True)
    assert whole.wide is not None
    assert wrapped_coordinates(whole.wide, s.bits) > 0  # the diagnostic sees the wrap
    assert np.array_equal(centred(whole.wide.astype(np.int64), s.bits), centred(totals[0], s.bits))


@pytest.mark.parametrize(
    ("noise", "local", "variance"), [("gaussian", 2.0, 4.0), ("skellam", 3.0, 3.0)]
)
def test_release_error_has_mean_zero_and_the_predicted_variance(
    noise: str, local: float, variance: float
) -> None:
    n, dim, rounds = 5, 60, 400
    s = spec(bits=20, scale=4.0, noise=noise, local_noise=local, dim=dim)
    updates = clipped(n, dim, 3)
    truth = updates.double().sum(0)
    signs = rotation_signs(2, 0, s.padded)  # fixed: the rounding variance is then fixed too
    errors = np.stack(
        [
            (
                decode(
                    encode_chunk(updates, signs, s, rngs(2, r, range(n))).total, signs, s
                ).double()
                - truth
            ).numpy()
            for r in range(rounds)
        ]
    )
    # Prediction: Hadamard entries all have square 1/d', so every coordinate gets the mean over
    # the d' rotated coordinates of (n * share variance + sum_i p_i (1 - p_i)), over s**2.
    y = rotate(updates.double(), signs) * s.scale
    p = (y - y.floor()).numpy()
    rounding = float((p * (1 - p)).sum()) / s.padded
    predicted = (n * variance + rounding) / s.scale**2
    assert errors.var(axis=0).mean() == pytest.approx(predicted, rel=0.06)
    se = math.sqrt(predicted / rounds)
    assert abs(errors.mean()) < 5 * se / math.sqrt(dim)
    assert np.abs(errors.mean(axis=0)).max() < 5 * se


def test_shapes_are_checked() -> None:
    s = spec()
    signs = rotation_signs(0, 0, s.padded)
    with pytest.raises(ValueError, match="updates must be"):
        encode_chunk(torch.zeros(2, s.dim + 1), signs, s, rngs(0, 0, range(2)))
    with pytest.raises(ValueError, match="one generator per client"):
        encode_chunk(torch.zeros(2, s.dim), signs, s, rngs(0, 0, range(3)))
    with pytest.raises(ValueError, match="total must be"):
        decode(np.zeros(3, dtype=np.int64), signs, s)
    empty = encode_chunk(torch.zeros(0, s.dim), signs, s, [])
    assert empty.clients == 0 and not empty.total.any()


def test_round_rows_does_not_depend_on_the_column_blocks() -> None:
    from mechanisms.ddp import round_rows

    # 3 * 2**17 columns of 2 rows: six blocks of columns on a CPU; the same draws in one by hand.
    x = torch.randn(2, 3 << 17, generator=torch.Generator().manual_seed(4)) * 0.01
    bound = inflated_norm_bound(float(x.norm(dim=1).max()) * 30, 3 << 17, BETA)

    def draw_from(seed: int):
        rngs = [np.random.default_rng([seed, row]) for row in range(2)]
        return lambda rows, width: torch.from_numpy(
            np.stack([rngs[int(r)].random(width) for r in rows])
        )

    rounded, retries = round_rows(x, bound, draw_from(1), factor=30.0)
    uniforms = draw_from(1)(torch.arange(2), 3 << 17)
    scaled = x.double() * 30.0
    expected = (scaled + uniforms).floor()  # floor(y) + 1 with probability frac(y)
    assert retries.tolist() == [0, 0]
    assert torch.equal(rounded, expected.to(torch.int64))
    assert not torch.equal(x, torch.zeros_like(x))  # the input is left alone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_encode_and_decode_on_cuda() -> None:
    s = spec()
    n = 6
    updates = clipped(n, s.dim, 8)
    signs = rotation_signs(0, 1, s.padded)
    encoding = encode_chunk(updates.cuda(), signs.cuda(), s, rngs(0, 1, range(n)))
    released = decode(encoding.total, signs.cuda(), s)
    assert released.device.type == "cuda"
    error = (released.double().cpu() - updates.double().sum(0)).norm().item()
    assert error <= n * math.sqrt(s.padded) / s.scale


def test_one_aggregate_skellam_draw_releases_what_per_client_shares_release():
    # The sum of n Skellam(mu) shares is Skellam(n mu): the decoded releases of the two ways
    # of drawing have the same law (two-sample Kolmogorov-Smirnov, and the same variance).
    from scipy import stats

    dim, n, trials = 48, 6, 300
    rng = np.random.default_rng(7)
    rows = torch.from_numpy(rng.normal(size=(n, dim)))
    rows /= rows.norm(dim=1, keepdim=True)
    signs = rotation_signs(3, 0, padded_dim(dim))
    errors = {}
    for aggregate in (False, True):
        spec = CodecSpec(20, 30.0, 40.0, "skellam", 50.0, dim, aggregate_shares=aggregate)
        draws = []
        for trial in range(trials):
            rngs = [np.random.default_rng([trial, client, int(aggregate)]) for client in range(n)]
            total = encode_chunk(rows, signs, spec, rngs).total
            draws.append(decode(total, signs, spec).numpy() - rows.sum(dim=0).numpy())
        errors[aggregate] = np.concatenate(draws)
    assert stats.ks_2samp(errors[False], errors[True]).pvalue > 0.001
    assert errors[True].var() == pytest.approx(errors[False].var(), rel=0.1)
