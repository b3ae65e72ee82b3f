"""Fuzz of the bag operations: 10,000 random lookup_bag calls per kernel (random vocab size, dim,
bag layout with empty bags, 1-D / include_last_offset / 2-D ids, mode, per_sample_weights,
padding_idx, table dtype, ids and offsets dtypes), each checked with LOOKUP_BAG.assert_matches;
10,000 random lookup_bag_grad calls per kernel against LOOKUP_BAG_GRAD.reference; and, for every
low-precision format a kernel implements, 5,000 of the same random bags over the table
kernels.quantize makes (float32 per_sample_weights and out), checked against the float64
reference of table.dequantize().

Case i is drawn from np.random.default_rng((SEED, i)) alone, so a failure message names the call
to replay: `random_bags(np.random.default_rng((SEED, i)), modes)`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import kernels
from conftest import IDS_DTYPES, SENTINEL
from kernels import LOOKUP_BAG, LOOKUP_BAG_GRAD
from kernels._formats import LOW_PRECISION
from kernels._validate import BAG_MODES
from test_bags import BACKWARD, FORWARD, assert_grad_within_bound, grad_terms, require, Bags

SEED = 20261126
N_FORWARD = 10_000
N_BACKWARD = 10_000
N_LOW_PRECISION = 5_000

OFFSETS_DTYPES = [np.int32, np.int64, np.uint32, np.uint64]


def random_lengths(rng, B):
    """B bag lengths: a quarter empty, the rest mostly short, now and then up to 40."""
    long = rng.random() < 0.1
    lengths = rng.geometric(0.05 if long else 0.3, size=B)
    lengths[rng.random(B) < 0.25] = 0
    return np.minimum(lengths, 40)


def random_bags(rng, modes):
    """(case, table, mode, per_sample_weights, use_out) for one random call."""
    dtype = np.dtype(rng.choice([np.float32, np.float64]))
    V = int(rng.choice([1, 2, 3, 7, 16, 50, 300]))
    D = 0 if rng.random() < 0.02 else int(rng.integers(1, 20))
    ids_dtype = IDS_DTYPES[rng.integers(len(IDS_DTYPES))]
    V = min(V, int(np.iinfo(ids_dtype).max) + 1)
    layout = rng.choice(["starts", "bounds", "2d"], p=[0.5, 0.25, 0.25])
    if layout == "2d":
        shape = (int(rng.integers(0, 8)), int(rng.integers(0, 6)))
        bounds = None
    else:
        lengths = random_lengths(rng, int(rng.integers(0, 10)))
        bounds = np.concatenate(([0], np.cumsum(lengths)))
        shape = (int(bounds[-1]),)
    ids = rng.integers(0, V, size=shape)
    padding_idx = None
    if rng.random() < 0.5:
        padding_idx = int(rng.integers(-V, V))
        ids[rng.random(shape) < 0.3] = padding_idx % V
    ids = ids.astype(ids_dtype)
    offsets = None
    if bounds is not None:
        offsets = bounds if layout == "bounds" else bounds[:-1]
        offsets = offsets.astype(OFFSETS_DTYPES[rng.integers(len(OFFSETS_DTYPES))])
    if rng.random() < 0.15 and ids.shape[0]:  # Python lists ([] would lose a (0, N) shape)
        ids = ids.tolist()
        offsets = None if offsets is None else offsets.tolist()
    case = Bags("fuzz", V, D, ids, offsets, layout == "bounds", padding_idx)
    mode = str(rng.choice(BAG_MODES))
    if mode not in modes:
        mode = sorted(modes)[int(rng.integers(len(modes)))]
    psw = None
    if mode != "max" and rng.random() < 0.5:
        if rng.random() < 0.5:
            psw = rng.uniform(0.1, 2.0, size=shape)
        else:
            psw = rng.uniform(-1.0, 1.0, size=shape)
        psw[rng.random(shape) < 0.1] = 0.0
        psw = psw.astype(dtype)
    W = rng.standard_normal((V, D)).astype(dtype)
    return case, W, mode, psw, rng.random() < 0.2


def describe(i, case, W, mode, psw):
    return (f"fuzz case {i} (replay: random_bags(np.random.default_rng(({SEED}, {i})), modes)): "
            f"V={case.V} D={case.D} {W.dtype} mode={mode} padding_idx={case.padding_idx} "
            f"include_last_offset={case.include_last_offset}\n ids={case.ids!r}\n "
            f"offsets={case.offsets!r}\n per_sample_weights={psw!r}")


pytestmark = pytest.mark.slow


def test_random_bags_match_the_float64_reference(kernel_name):
    k = kernels.KERNELS[kernel_name]
    modes = [m for m in BAG_MODES if m in k.bag_modes]
    for mode in modes:
        require(kernel_name, mode, np.float32, FORWARD)
        require(kernel_name, mode, np.float64, FORWARD)
    checked = 0
    for i in range(N_FORWARD):
        case, W, mode, psw, use_out = random_bags(np.random.default_rng((SEED, i)), modes)
        out = np.full((case.B, case.D), SENTINEL, W.dtype) if use_out else None
        try:
            got = k.lookup_bag(W, case.ids, case.offsets, out=out, **case.kwargs(mode, psw))
            assert out is None or got is out, "out= was not returned"
            LOOKUP_BAG.assert_matches(got, W, *case.ref_args(mode, psw))
        except Exception as e:
            raise AssertionError(f"{kernel_name}: {describe(i, case, W, mode, psw)}\n{e!r}") from e
        checked += 1
    assert checked == N_FORWARD


def test_random_bag_gradients_within_the_summation_bound(kernel_name):
    k = kernels.KERNELS[kernel_name]
    modes = [m for m in BAG_MODES if m in k.bag_modes]
    for mode in modes:
        require(kernel_name, mode, np.float32, BACKWARD)
        require(kernel_name, mode, np.float64, BACKWARD)
    checked = 0
    for i in range(N_BACKWARD):
        rng = np.random.default_rng((SEED, i))
        case, W, mode, psw, use_out = random_bags(rng, modes)
        G = rng.standard_normal((case.B, case.D)).astype(W.dtype)
        out = np.full((case.V, case.D), SENTINEL, W.dtype) if use_out else None
        try:
            result = k.lookup_bag_grad(G, case.ids, case.offsets, case.V, weights=W, out=out,
                                       **case.kwargs(mode, psw))
            dW = result if psw is None else result[0]
            assert out is None or dW is out, "out= was not returned"
            ref = LOOKUP_BAG_GRAD.reference(G, case.ids, case.offsets, case.V, mode, psw,
                                            case.padding_idx, case.include_last_offset, W)
            assert_grad_within_bound(dW, ref, *grad_terms(case, G, W, mode, psw))
        except Exception as e:
            raise AssertionError(f"{kernel_name}: {describe(i, case, W, mode, psw)}\n{e!r}") from e
        checked += 1
    assert checked == N_BACKWARD


def low_precision_case(rng, modes, fmt):
    """random_bags' call over a `fmt` table: the case (D made even for int4), the table, mode,
    float32 per_sample_weights, use_out."""
    case, W, mode, psw, use_out = random_bags(rng, modes)
    if fmt == "int4" and case.D % 2:
        case = dataclasses.replace(case, D=case.D + 1)
    W = rng.standard_normal((case.V, case.D)).astype(np.float32)
    psw = None if psw is None else psw.astype(np.float32)
    return case, kernels.quantize(W, fmt), mode, psw, use_out


@pytest.mark.parametrize("fmt", [f.name for f in LOW_PRECISION])
def test_random_bags_of_low_precision_tables_match_the_float64_reference(kernel_name, fmt):
    k = kernels.KERNELS[kernel_name]
    if not k.implements(FORWARD, fmt):
        T = kernels.quantize(np.ones((4, 2), np.float32), fmt)
        with pytest.raises(NotImplementedError, match="implemented by: " + ", ".join(
                kernels.kernels_implementing(FORWARD, fmt))):
            k.lookup_bag(T, [1, 2], [0, 1])
        pytest.skip(f"{kernel_name} does not implement {FORWARD} for {fmt} (checked)")
    modes = [m for m in BAG_MODES if m in k.bag_modes]
    for i in range(N_LOW_PRECISION):
        case, T, mode, psw, use_out = low_precision_case(np.random.default_rng((SEED, i)), modes,
                                                         fmt)
        out = np.full((case.B, case.D), SENTINEL, np.float32) if use_out else None
        try:
            got = k.lookup_bag(T, case.ids, case.offsets, out=out, **case.kwargs(mode, psw))
            assert out is None or got is out, "out= was not returned"
            LOOKUP_BAG.assert_matches(got, T, *case.ref_args(mode, psw))
        except Exception as e:
            raise AssertionError(
                f"{kernel_name} {fmt}: case {i} (replay: low_precision_case(np.random."
                f"default_rng(({SEED}, {i})), modes, {fmt!r})): V={case.V} D={case.D} "
                f"mode={mode} padding_idx={case.padding_idx}\n ids={case.ids!r}\n "
                f"offsets={case.offsets!r}\n per_sample_weights={psw!r}\n{e!r}") from e
