"""kernels.torch: the drop-in Embedding / EmbeddingBag modules and their operators, against
torch's own nn.Embedding / nn.EmbeddingBag.

Float tolerances are the summation bound: a value summed from k terms differs from the exact sum
by at most k * eps * (the sum of the terms' magnitudes), for ours and for torch each, so the two
are held to 2 * (k + 3) * eps * that sum (the 3: the division of mean, the product with a
per-sample weight, the rounding of the result). max is compared bit for bit.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import kernels  # noqa: E402
import kernels.optim  # noqa: E402
import kernels.torch as kt  # noqa: E402

DTYPES = [torch.float32, torch.float64]
MODES = ["sum", "mean", "max"]


def dtype_id(dt):
    return str(dt).replace("torch.", "")


def eps(dtype):
    return torch.finfo(dtype).eps


def assert_within_bound(ours, ref, scale, k, dtype, what=""):
    """|ours - ref| <= 2 (k + 3) eps * scale, element-wise (scale: the sum of |terms|)."""
    ours, ref, scale = (t.detach().to_dense().double() if t.is_sparse else t.detach().double()
                        for t in (ours, ref, scale))
    assert ours.shape == ref.shape, what
    bound = 2 * (k + 3) * eps(dtype) * scale
    err = (ours - ref).abs()
    assert bool((err <= bound).all()), f"{what}: max excess {float((err - bound).max())}"


def pair(torch_cls, ours_cls, *args, seed=0, **kwargs):
    """(torch's module, ours) with the same weights: both initialised from the same seed."""
    torch.manual_seed(seed)
    ref = torch_cls(*args, **kwargs)
    torch.manual_seed(seed)
    ours = ours_cls(*args, **kwargs)
    return ref, ours


# -- import ---------------------------------------------------------------------------------------

def test_importing_kernels_never_imports_torch():
    code = ("import sys, kernels, kernels.optim; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_kernels_torch_registers_the_operators():
    for name in ("embedding", "embedding_backward", "embedding_sparse_backward", "embedding_bag",
                 "embedding_bag_backward", "embedding_bag_sparse_backward"):
        assert hasattr(getattr(torch.ops, kt.NAMESPACE), name)


# -- construction -----------------------------------------------------------------------------

def test_construction_matches_torch_initialisation_state_dict_and_defaults():
    ref, ours = pair(torch.nn.Embedding, kt.Embedding, 50, 8, padding_idx=3)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight"]
    assert torch.equal(ours.weight, ref.weight)
    assert bool((ours.weight[3] == 0).all())
    assert ours.kernel == "auto" and not ours.sparse and ours.padding_idx == 3
    assert isinstance(ours, torch.nn.Embedding)
    ref, ours = pair(torch.nn.EmbeddingBag, kt.EmbeddingBag, 50, 8, padding_idx=-1)
    assert list(ours.state_dict()) == ["weight"] and torch.equal(ours.weight, ref.weight)
    assert ours.mode == ref.mode == "mean" and ours.padding_idx == ref.padding_idx == 49
    assert isinstance(ours, torch.nn.EmbeddingBag)
    back = torch.nn.EmbeddingBag(50, 8)
    back.load_state_dict(ours.state_dict())  # and back again: the same keys and shapes
    assert torch.equal(back.weight, ours.weight)


def test_from_pretrained_shares_the_tensor_and_freezes_like_torch():
    W = torch.randn(10, 4)
    e = kt.Embedding.from_pretrained(W, padding_idx=1, kernel="cython_gather")
    assert e.weight.data_ptr() == W.data_ptr() and not e.weight.requires_grad
    assert e.kernel == "cython_gather" and e.padding_idx == 1
    b = kt.EmbeddingBag.from_pretrained(W, freeze=False, mode="max")
    assert b.weight.requires_grad and b.mode == "max"
    ids = torch.tensor([[1, 2], [3, 3]])
    assert torch.equal(b(ids), F.embedding_bag(ids, W, mode="max"))


@pytest.mark.parametrize("kwargs, needle", [
    ({"max_norm": 1.0}, "max_norm"),
    ({"scale_grad_by_freq": True}, "scale_grad_by_freq"),
    ({"device": "meta"}, "CPU only"),
    ({"dtype": torch.float16}, "float32 or float64"),
])
@pytest.mark.parametrize("cls", [kt.Embedding, kt.EmbeddingBag])
def test_unimplemented_arguments_raise_at_construction(cls, kwargs, needle):
    with pytest.raises(NotImplementedError, match=needle):
        cls(10, 4, **kwargs)


def test_an_unknown_kernel_or_a_mode_the_kernel_lacks_is_refused_at_construction():
    with pytest.raises(ValueError, match="unknown kernel"):
        kt.Embedding(10, 4, kernel="nope")
    with pytest.raises(NotImplementedError, match="max"):
        kt.EmbeddingBag(10, 4, mode="max", kernel="onehot_dense")
    with pytest.raises(ValueError, match="mode"):
        kt.EmbeddingBag(10, 4, mode="median")
    assert kt.Embedding(10, 4, kernel=kernels.KERNELS["numba_gather"]).kernel == "numba_gather"


# -- Embedding against torch ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("kernel", ["auto", "cython_gather", "numba_gather", "numpy_take"])
def test_embedding_forward_and_gradient_equal_torch(dtype, padding_idx, sparse, kernel):
    ref, ours = pair(torch.nn.Embedding, kt.Embedding, 40, 6, padding_idx=padding_idx,
                     sparse=sparse, dtype=dtype)
    ours.kernel = kernel
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 8, (5, 7), generator=g)  # many duplicates, the padding id among them
    G = torch.randn(5, 7, 6, dtype=dtype, generator=g)
    out, out_ref = ours(ids), ref(ids)
    assert torch.equal(out, out_ref)
    (out * G).sum().backward()
    (out_ref * G).sum().backward()
    assert ours.weight.grad.is_sparse == sparse
    if sparse:
        assert ours.weight.grad.is_coalesced()
    # each row sums at most ids.numel() terms of |G|
    scale = torch.zeros(40, 6, dtype=torch.float64).index_add_(0, ids.reshape(-1),
                                                               G.abs().double().reshape(-1, 6))
    assert_within_bound(ours.weight.grad, ref.weight.grad, scale, ids.numel(), dtype, "dW")
    if padding_idx is not None:
        assert bool((ours.weight.grad.to_dense()[padding_idx] == 0).all())


@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_embedding_takes_any_integer_dtype_of_ids(ids_dtype):
    e = kt.Embedding(30, 4)
    ids = torch.tensor([[0, 29], [5, 5]], dtype=ids_dtype)
    assert torch.equal(e(ids), e.weight.detach()[ids.long()])


def test_zero_dim_and_empty_ids():
    e = kt.Embedding(30, 4)
    assert torch.equal(e(torch.tensor(7)), e.weight.detach()[7])
    assert e(torch.empty(0, 3, dtype=torch.int64)).shape == (0, 3, 4)


# -- EmbeddingBag against torch -----------------------------------------------------------------

def bag_case(seed, n=40, B=9, V=25):
    """(ids, offsets) with empty bags (B starts, two repeated) and many duplicates."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V // 3, (n,), generator=g)
    starts = torch.sort(torch.randint(0, n, (B - 1,), generator=g)).values
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), starts])
    offsets[3] = offsets[4]  # an empty bag in the middle
    return ids, offsets


def bag_scale(ids, offsets, W, mode, psw, include_last_offset):
    """Per output element: the sum of |terms| over the bag, divided as mean divides."""
    absw = None if psw is None else psw.detach().abs().double()
    mode_s = "sum" if mode == "max" else mode
    return F.embedding_bag(ids, W.detach().abs().double(), offsets, mode=mode_s,
                           per_sample_weights=absw, include_last_offset=include_last_offset)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode, weighted", [("sum", False), ("sum", True), ("mean", False),
                                             ("max", False)])  # torch: weights with sum only
@pytest.mark.parametrize("padding_idx", [None, 1])
@pytest.mark.parametrize("include_last_offset", [False, True], ids=["starts", "bounds"])
@pytest.mark.parametrize("sparse", [False, True])
def test_embedding_bag_forward_and_gradients_equal_torch(dtype, mode, padding_idx, weighted,
                                                         include_last_offset, sparse):
    V, D = 25, 5
    kw = dict(mode=mode, padding_idx=padding_idx, include_last_offset=include_last_offset,
              dtype=dtype)
    torch.manual_seed(0)
    ref = torch.nn.EmbeddingBag(V, D, sparse=sparse and mode != "max", **kw)  # torch: no
    torch.manual_seed(0)                                                      # sparse max
    ours = kt.EmbeddingBag(V, D, sparse=sparse, **kw)
    ids, offsets = bag_case(2)
    if include_last_offset:
        offsets = torch.cat([offsets, torch.tensor([ids.numel()])])
    g = torch.Generator().manual_seed(3)
    psw = torch.rand(ids.numel(), dtype=dtype, generator=g).requires_grad_() if weighted \
        else None
    psw_ref = psw.detach().clone().requires_grad_() if weighted else None
    out, out_ref = ours(ids, offsets, psw), ref(ids, offsets, psw_ref)
    k = ids.numel()
    if mode == "max":
        assert torch.equal(out, out_ref)
    else:
        scale = bag_scale(ids, offsets, ref.weight, mode, psw, include_last_offset)
        assert_within_bound(out, out_ref, scale, k, dtype, "forward")
    G = torch.randn(out.shape, dtype=dtype, generator=g)
    (out * G).sum().backward()
    (out_ref * G).sum().backward()
    assert ours.weight.grad.is_sparse == sparse
    dW, dW_ref = ours.weight.grad.to_dense(), ref.weight.grad.to_dense()
    # the gradient of a row sums at most k terms |G[b]| * |w| (/ count for mean)
    Gs = G.abs().double()
    scale = torch.zeros(V, D, dtype=torch.float64)
    bounds = offsets.tolist() + ([] if include_last_offset else [ids.numel()])
    for b in range(len(bounds) - 1):
        for j in range(bounds[b], bounds[b + 1]):
            w = 1.0 if psw is None else float(psw[j].detach().abs())
            scale[ids[j]] += Gs[b] * w
    assert_within_bound(dW, dW_ref, scale, k, dtype, "dW")
    if padding_idx is not None:
        assert bool((dW[padding_idx] == 0).all())
    if weighted:
        # d out[b] / d psw[j] = <G[b], W[ids[j]]>: one dot product of D terms
        s = (ref.weight.detach().abs().double()[ids] * Gs.repeat_interleave(
            torch.diff(torch.tensor(bounds)), dim=0)).sum(1)
        assert_within_bound(psw.grad, psw_ref.grad, s, D, dtype, "d psw")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("include_last_offset", [False, True])  # torch: no meaning with 2-D
def test_embedding_bag_with_2d_input_equals_torch(mode, include_last_offset):
    ref, ours = pair(torch.nn.EmbeddingBag, kt.EmbeddingBag, 30, 4, mode=mode,
                     include_last_offset=include_last_offset)
    ids = torch.randint(0, 30, (6, 3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(ids), ref(ids), rtol=1e-6, atol=1e-6)


def test_embedding_bag_mode_sqrtn_and_weighted_mean_go_beyond_torch():
    b = kt.EmbeddingBag(20, 3, mode="sqrtn")
    ids, off = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])
    W = b.weight.detach()
    want = torch.stack([(W[1] + W[2]) / 2 ** 0.5, (W[3] + W[4]) / 2 ** 0.5])
    torch.testing.assert_close(b(ids, off), want)
    m = kt.EmbeddingBag(20, 3, mode="mean")
    w = torch.tensor([1.0, 3.0, 1.0, 1.0])
    torch.testing.assert_close(m(ids, off, w)[0], (m.weight[1] + 3 * m.weight[2]) / 4)


def test_empty_batch_of_bags():
    b = kt.EmbeddingBag(20, 3, mode="sum")
    assert b(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)).shape == (0, 3)
    out = b(torch.empty(0, dtype=torch.int64), torch.tensor([0, 0]))
    assert torch.equal(out, torch.zeros(2, 3))


# -- gradcheck --------------------------------------------------------------------------------

def test_gradcheck_embedding_float64():
    W = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 5, 5], [11, 2, 5]])
    assert torch.autograd.gradcheck(lambda w: kt.embedding(ids, w), (W,))
    assert torch.autograd.gradcheck(lambda w: kt._embedding(w, ids, None, False, "auto"), (W,))
    # (with padding_idx the forward still returns the padding row, whose gradient is withheld
    # by definition, as in torch: no gradcheck there)


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "sqrtn"])
def test_gradcheck_embedding_bag_float64(mode):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 3, dtype=torch.float64, generator=g, requires_grad=True)
    ids = torch.tensor([0, 5, 5, 11, 2, 7, 7, 1])
    off = torch.tensor([0, 3, 3, 6])
    assert torch.autograd.gradcheck(lambda w: kt.embedding_bag(ids, w, off, mode=mode), (W,))
    assert torch.autograd.gradcheck(  # the operator itself (the eager call bypasses it)
        lambda w: kt._embedding_bag(w, ids, off, None, mode, None, False, False, "auto"), (W,))
    if mode != "max":
        psw = torch.rand(8, dtype=torch.float64, generator=g).add_(0.5).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda w, p: kt.embedding_bag(ids, w, off, mode=mode, per_sample_weights=p,
                                          padding_idx=7), (W, psw))
        assert torch.autograd.gradcheck(
            lambda w, p: kt._embedding_bag(w, ids, off, p, mode, 7, False, False, "auto"),
            (W, psw))


@pytest.mark.parametrize("sparse", [False, True])
def test_eager_calls_and_the_operators_give_the_same_bits(sparse):
    """Outside torch.compile the functional forms call the operators' functions directly (no
    dispatch); forward, the table's gradient and per_sample_weights' are the operators' bits."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 30, (40,), generator=g)
    off = torch.tensor([0, 5, 5, 17, 30])
    for dtype in (torch.float32, torch.float64):
        W0 = torch.randn(30, 6, dtype=dtype, generator=g)
        p0 = torch.rand(40, dtype=dtype, generator=g)
        for mode in ("sum", "mean", "max", "sqrtn"):
            got = []
            for eager in (True, False):
                W = W0.clone().requires_grad_()
                p = None if mode == "max" else p0.clone().requires_grad_()
                if eager:
                    out = kt.embedding_bag(ids, W, off, mode=mode, per_sample_weights=p,
                                           padding_idx=4, sparse=sparse)
                else:
                    out = kt._embedding_bag(W, ids, off, p, mode, 4, False, sparse, "auto")
                (out * torch.arange(out.numel(), dtype=dtype).reshape(out.shape)).sum().backward()
                got.append((out.detach(), W.grad.to_dense(), None if p is None else p.grad))
            for a, b in zip(*got):
                if a is not None:
                    assert torch.equal(a, b)
        W = W0.clone().requires_grad_()
        outs = []
        for fn in (lambda w: kt.embedding(ids.reshape(8, 5), w, 3, sparse=sparse),
                   lambda w: kt._embedding(w, ids.reshape(8, 5), 3, sparse, "auto")):
            W.grad = None
            out = fn(W)
            out.pow(2).sum().backward()
            outs.append((out.detach(), W.grad.to_dense()))
        assert all(torch.equal(a, b) for a, b in zip(*outs))


@pytest.mark.parametrize("sparse", [False, True])
def test_the_operators_pass_torch_library_opcheck(sparse):
    W = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 20, (12,), generator=torch.Generator().manual_seed(0))
    off = torch.tensor([0, 3, 3, 7])
    psw = torch.rand(12, dtype=torch.float64, requires_grad=True)
    for args in [(W, ids, off, psw, "sum", None, False, sparse, "auto"),
                 (W, ids, off, None, "max", 2, False, sparse, "cython_gather"),
                 (W, ids, off, psw, "mean", 3, False, sparse, "numba_gather")]:
        torch.library.opcheck(kt._embedding_bag, args)
    torch.library.opcheck(kt._embedding, (W, ids.reshape(3, 4), 5, sparse, "auto"))
    torch.library.opcheck(kt._embedding, (W, ids.reshape(3, 4), None, sparse, "auto"))


# -- zero copy --------------------------------------------------------------------------------

def test_tensors_reach_the_kernels_as_views_and_outputs_are_written_in_place(monkeypatch):
    seen = {}
    real = kernels.lookup_bag

    def spy(W, ids, offsets, *, out, **kw):
        seen.update(W=W, ids=ids, offsets=offsets, out=out)
        return real(W, ids, offsets, out=out, **kw)

    monkeypatch.setattr(kernels, "lookup_bag", spy)
    b = kt.EmbeddingBag(50, 4, mode="sum")
    ids, off = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    result = b(ids, off)
    addr = lambda a: a.__array_interface__["data"][0]  # noqa: E731
    assert addr(seen["W"]) == b.weight.data_ptr()
    assert addr(seen["ids"]) == ids.data_ptr() and addr(seen["offsets"]) == off.data_ptr()
    assert addr(seen["out"]) == result.data_ptr()


# -- sparse gradients in torch's optimizers ---------------------------------------------------

@pytest.mark.parametrize("opt_name, kwargs", [("SGD", {"lr": 0.1}), ("SparseAdam", {"lr": 0.01}),
                                               ("Adagrad", {"lr": 0.1})])
@pytest.mark.parametrize("cls", ["Embedding", "EmbeddingBag"])
def test_sparse_gradients_drive_torchs_own_optimizers_as_torchs_do(opt_name, kwargs, cls):
    extra = {"mode": "sum"} if cls == "EmbeddingBag" else {}
    ref, ours = pair(getattr(torch.nn, cls), getattr(kt, cls), 60, 8, sparse=True, **extra)
    opts = [getattr(torch.optim, opt_name)(m.parameters(), **kwargs) for m in (ref, ours)]
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        ids = torch.randint(0, 20, (6, 5), generator=g)
        G = torch.randn(6, 8 if cls == "EmbeddingBag" else 5, 8, generator=g)
        G = G[:, 0] if cls == "EmbeddingBag" else G
        for m, opt in zip((ref, ours), opts):
            opt.zero_grad()
            (m(ids) * G).sum().backward()
            opt.step()
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.weight[20:], ref.weight[20:])  # rows no id touched


# -- the fused step ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ["Embedding", "EmbeddingBag"])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_fused_adagrad_updates_like_torchs_sparse_adagrad_and_leaves_no_gradient(cls,
                                                                                padding_idx):
    extra = {"mode": "mean"} if cls == "EmbeddingBag" else {}
    ref, ours = pair(getattr(torch.nn, cls), getattr(kt, cls), 60, 8, sparse=True,
                     padding_idx=padding_idx, **extra)
    topt = torch.optim.Adagrad(ref.parameters(), lr=0.1)
    fused = ours.fuse_optimizer(kernels.optim.Adagrad, lr=0.1)
    assert isinstance(fused, kernels.optim.Adagrad) and ours.fused_optimizer is fused
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        ids = torch.randint(0, 20, (6, 5), generator=g)
        out_shape = (6, 8) if cls == "EmbeddingBag" else (6, 5, 8)
        G = torch.randn(out_shape, generator=g)
        topt.zero_grad()
        (ref(ids) * G).sum().backward()
        topt.step()
        (ours(ids) * G).sum().backward()
        assert ours.weight.grad is None
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.weight[20:], ref.weight[20:])
    ours.fuse_optimizer(None)
    (ours(ids) * G).sum().backward()
    assert ours.weight.grad is not None


def test_fused_step_is_skipped_without_grad_and_checks_its_binding():
    e = kt.Embedding(10, 4)
    e.fuse_optimizer(kernels.optim.SGD, lr=1.0)
    before = e.weight.detach().clone()
    with torch.no_grad():
        e(torch.tensor([1, 2]))
    assert torch.equal(e.weight, before)
    e.weight = torch.nn.Parameter(torch.randn(10, 4))
    with pytest.raises(RuntimeError, match="fuse_optimizer again"):
        e(torch.tensor([1]))


# -- a model swapped in -----------------------------------------------------------------------

class ClickModel(torch.nn.Module):
    """Two bags (sum) and an MLP on their concatenation: a click logit per sample."""

    def __init__(self, bag_cls, sparse, vocab=(300, 150), dim=8):
        super().__init__()
        self.bags = torch.nn.ModuleList(bag_cls(v, dim, mode="sum", sparse=sparse)
                                        for v in vocab)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(len(vocab) * dim, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 1))

    def forward(self, ids, offsets):
        x = torch.cat([bag(i, offsets) for bag, i in zip(self.bags, ids)], dim=1)
        return self.mlp(x).squeeze(1)


def click_batches(steps, vocab=(300, 150), B=32, L=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(0, B * L, L)
    for _ in range(steps):
        ids = [torch.randint(0, v, (B * L,), generator=g) for v in vocab]
        y = ((ids[0].view(B, L) % 3 == 0).sum(1) > 1).float()
        yield ids, offsets, y


def loss_curve(model, steps, fused=False, lr=0.1):
    if fused:
        for bag in model.bags:
            bag.fuse_optimizer(kernels.optim.SGD, lr=lr)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for ids, offsets, y in click_batches(steps):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(ids, offsets), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def twin_models():
    torch.manual_seed(0)
    ref = ClickModel(torch.nn.EmbeddingBag, sparse=True)
    ours = ClickModel(kt.EmbeddingBag, sparse=True)
    ours.load_state_dict(ref.state_dict())  # the same keys: a drop-in
    return ref, ours


@pytest.mark.parametrize("fused", [False, True], ids=["sparse_sgd", "fused_sgd"])
def test_a_model_swapped_in_follows_torchs_loss_curve_for_50_steps(fused):
    ref, ours = twin_models()
    want = loss_curve(ref, 50)
    got = loss_curve(ours, 50, fused=fused)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert want[-1] < want[0]  # it learns something
    for a, b in zip(ours.bags, ref.bags):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-4, atol=1e-5)


# -- torch.compile ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sparse", [False, True])
def test_torch_compile_runs_without_graph_break_and_matches_eager(sparse):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ClickModel(kt.EmbeddingBag, sparse=sparse)
    eager = ClickModel(kt.EmbeddingBag, sparse=sparse)
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is an error
    for ids, offsets, y in click_batches(2):
        for m in (compiled, eager):
            m.zero_grad()
            F.binary_cross_entropy_with_logits(m(ids, offsets), y).backward()
        torch.testing.assert_close(compiled(ids, offsets), eager(ids, offsets))
        for a, b in zip(model.parameters(), eager.parameters()):
            assert a.grad.is_sparse == b.grad.is_sparse
            torch.testing.assert_close(a.grad.to_dense(), b.grad.to_dense())


@pytest.mark.slow
def test_torch_compile_of_embedding_with_padding_matches_eager():
    torch._dynamo.reset()
    e = kt.Embedding(30, 4, padding_idx=0)
    ids = torch.tensor([[0, 3, 3], [7, 0, 1]])
    f = torch.compile(lambda i: (e(i) ** 2).sum(), fullgraph=True)
    f(ids).backward()
    got = e.weight.grad.clone()
    e.weight.grad = None
    (e(ids) ** 2).sum().backward()
    torch.testing.assert_close(got, e.weight.grad)


@pytest.mark.slow
def test_torch_compile_with_a_fused_step_runs_the_embedding_eagerly():
    torch._dynamo.reset()
    ref, ours = twin_models()
    want = loss_curve(ref, 5)
    compiled = torch.compile(ours)
    for bag in ours.bags:
        bag.fuse_optimizer(kernels.optim.SGD, lr=0.1)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    got = []
    for ids, offsets, y in click_batches(5):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(compiled(ids, offsets), y)
        loss.backward()
        opt.step()
        got.append(loss.item())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_errors_keep_their_types_under_torch_compile():
    torch._dynamo.reset()
    m = kt.EmbeddingBag(10, 4, mode="sum")
    same = unchanged(m)
    f = torch.compile(m)  # (with fullgraph=True dynamo reports the TypeError as Unsupported)
    f(torch.tensor([1, 2]), torch.tensor([0]))
    with pytest.raises(IndexError, match=r"id 12 at position \(1,\)"):
        f(torch.tensor([1, 12]), torch.tensor([0]))
    with pytest.raises(TypeError, match="integer dtype"):
        f(torch.tensor([1.0, 2.0]), torch.tensor([0]))
    assert same()


# -- bad input --------------------------------------------------------------------------------

def unchanged(module):
    before = module.weight.detach().clone()
    return lambda: torch.equal(module.weight.detach(), before)


@pytest.mark.parametrize("sparse", [False, True])
def test_ids_out_of_range_raise_the_kernels_index_error_with_the_position(sparse):
    e = kt.Embedding(10, 4, sparse=sparse)
    same = unchanged(e)
    with pytest.raises(IndexError, match=r"id 10 at position \(1, 0\) is out of range"):
        e(torch.tensor([[1, 2], [10, 3]]))
    with pytest.raises(IndexError, match=r"id -1 at position \(2,\)"):
        e(torch.tensor([1, 2, -1]))
    b = kt.EmbeddingBag(10, 4, sparse=sparse)
    with pytest.raises(IndexError, match=r"id 12 at position \(3,\)"):
        b(torch.tensor([1, 2, 3, 12]), torch.tensor([0, 2]))
    assert same()


@pytest.mark.parametrize("cls", [kt.Embedding, kt.EmbeddingBag])
def test_float_ids_raise_type_error(cls):
    m = cls(10, 4)
    same = unchanged(m)
    with pytest.raises(TypeError, match="input must have an integer dtype, got torch.float32"):
        m(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(TypeError, match="integer dtype"):
        m(torch.tensor([[True]]))
    assert same()


def test_float_offsets_raise_type_error():
    with pytest.raises(TypeError, match="offsets must have an integer dtype"):
        kt.EmbeddingBag(10, 4)(torch.tensor([1, 2]), torch.tensor([0.0]))


@pytest.mark.parametrize("cls", [kt.Embedding, kt.EmbeddingBag])
def test_tensors_off_the_cpu_are_refused_naming_the_cpu_only_support(cls):
    m = cls(10, 4)
    same = unchanged(m)
    with pytest.raises(ValueError, match="input is on device meta: kernels.torch runs on CPU "
                                         "tensors only"):
        m(torch.tensor([[1, 2]], device="meta"))
    with torch.no_grad():
        m.weight = torch.nn.Parameter(m.weight.to("meta"))
    with pytest.raises(ValueError, match="weight is on device meta.*CPU tensors only"):
        m(torch.tensor([[1, 2]]))
    assert same is not None


@pytest.mark.parametrize("cls", [kt.Embedding, kt.EmbeddingBag])
def test_a_non_contiguous_weight_is_refused_and_left_unchanged(cls):
    m = cls(10, 4)
    W = torch.randn(4, 10).t()
    m.weight = torch.nn.Parameter(W)
    same = unchanged(m)
    with pytest.raises(ValueError, match="weight must be contiguous"):
        m(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="weight must be contiguous"):
        m.fuse_optimizer(kernels.optim.SGD, lr=0.1)
    assert same() and not m.weight.is_contiguous()


def test_bag_layout_errors_are_clear():
    b = kt.EmbeddingBag(10, 4)
    same = unchanged(b)
    with pytest.raises(ValueError, match="offsets has to be None if input is 2-D"):
        b(torch.tensor([[1, 2]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="1-D input needs offsets"):
        b(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="offsets"):
        b(torch.tensor([1, 2]), torch.tensor([1]))  # offsets[0] != 0
    with pytest.raises(TypeError, match="per_sample_weights must have the weight's dtype"):
        kt.EmbeddingBag(10, 4, mode="sum")(torch.tensor([1, 2]), torch.tensor([0]),
                                           torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="per_sample_weights"):
        kt.EmbeddingBag(10, 4, mode="max")(torch.tensor([1, 2]), torch.tensor([0]),
                                           torch.ones(2))
    assert same()


def test_errors_in_the_fused_backward_change_nothing():
    b = kt.EmbeddingBag(10, 4, mode="sum")
    b.fuse_optimizer(kernels.optim.SGD, lr=1.0)
    same = unchanged(b)
    with pytest.raises(IndexError):
        b(torch.tensor([1, 22]), torch.tensor([0]))
    with pytest.raises(NotImplementedError, match="per_sample_weights"):
        b(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(2, requires_grad=True))
    assert same()


def test_saved_loaded_and_copied_modules_keep_their_kernel_and_coalesced_gradients(tmp_path):
    import copy

    m = kt.EmbeddingBag(20, 4, mode="sum", sparse=True, kernel="numba_gather")
    torch.save(m, tmp_path / "m.pt")
    ids = torch.tensor([[1, 2], [3, 3]])
    for other in (torch.load(tmp_path / "m.pt", weights_only=False), copy.deepcopy(m)):
        assert other.kernel == "numba_gather" and torch.equal(other.weight, m.weight)
        other(ids).sum().backward()
        assert other.weight.grad.is_coalesced()
        torch.testing.assert_close(other.weight.grad.to_dense()[3], torch.full((4,), 2.0))


def test_a_gradient_accumulated_over_two_backward_passes_is_right_and_its_flag_true():
    m = kt.Embedding(20, 4, sparse=True)
    m(torch.tensor([1, 2])).sum().backward()
    m(torch.tensor([2, 5])).sum().backward()
    g = m.weight.grad
    if g.is_coalesced():  # the flag, when set, must be true: unique, sorted rows
        idx = g._indices()[0]
        assert bool((idx[1:] > idx[:-1]).all())
    torch.testing.assert_close(g.coalesce().to_dense()[2], torch.full((4,), 2.0))
    torch.testing.assert_close(g.to_dense().sum(), torch.tensor(16.0))


@pytest.mark.parametrize("kernel", sorted(kernels.KERNELS))
@pytest.mark.parametrize("sparse", [False, True])
def test_every_kernel_serves_the_modules(kernel, sparse):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (24,), generator=g)
    offsets = torch.tensor([0, 5, 5, 17])
    G = torch.randn(4, 6, generator=g)
    ref, ours = pair(torch.nn.EmbeddingBag, kt.EmbeddingBag, 30, 6, mode="mean", sparse=sparse)
    ours.kernel = kernel
    out, out_ref = ours(ids, offsets), ref(ids, offsets)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    (out * G).sum().backward()
    (out_ref * G).sum().backward()
    torch.testing.assert_close(ours.weight.grad.to_dense(), ref.weight.grad.to_dense(),
                               rtol=1e-5, atol=1e-6)
    e_ref, e = pair(torch.nn.Embedding, kt.Embedding, 30, 6, sparse=sparse)
    e.kernel = kernel
    assert torch.equal(e(ids), e_ref(ids))



# -- QuantizedEmbeddingBag: inference on a low-precision table ---------------------------------


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "int8", "int4"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_quantized_bag_equals_the_kernels_bag_of_its_table(fmt, mode):
    torch.manual_seed(3)
    bag = torch.nn.EmbeddingBag(500, 32, mode=mode, padding_idx=7)
    q = kt.QuantizedEmbeddingBag.from_embedding_bag(bag, fmt, kernel="cython_gather")
    rng = np.random.default_rng(3)
    ids = torch.from_numpy(rng.integers(0, 500, 300))
    offsets = torch.from_numpy(np.sort(rng.choice(300, 40, replace=False)))
    offsets[0] = 0
    got = q(ids, offsets)
    want = kernels.lookup_bag(q.table, ids.numpy(), offsets.numpy(), mode=mode, padding_idx=7,
                              kernel="numpy_take")
    assert got.dtype == torch.float32 and got.shape == (40, 32)
    np.testing.assert_array_equal(got.numpy().view(np.uint32), want.view(np.uint32))
    theirs = bag(ids, offsets).detach().numpy()  # the float32 table: within quantization error
    err = np.abs(bag.weight.detach().numpy() - q.table.dequantize()).max()
    longest = int(np.diff(np.append(offsets.numpy(), 300)).max())
    np.testing.assert_allclose(got.numpy(), theirs, rtol=0, atol=longest * err * 1.01 + 1e-5)


def test_quantized_int8_bag_agrees_with_torchs_quantized_op_on_the_same_bytes():
    torch.manual_seed(4)
    bag = torch.nn.EmbeddingBag(400, 64, mode="sum")
    q = kt.QuantizedEmbeddingBag.from_embedding_bag(bag, "int8")
    ids = torch.randint(0, 400, (50, 6))  # 2-D: fixed-size bags
    got = q(ids)
    flat = ids.reshape(-1)
    theirs = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
        torch.from_numpy(q.table.packed), flat, torch.arange(0, 300, 6), mode=0)
    np.testing.assert_allclose(got.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)


def test_quantized_bag_refuses_what_it_cannot_do():
    T = kernels.quantize(np.ones((10, 4), np.float32), "int8")
    with pytest.raises(TypeError, match="kernels.Table"):
        kt.QuantizedEmbeddingBag(np.ones((10, 4), np.float32))
    with pytest.raises(ValueError, match="mode"):
        kt.QuantizedEmbeddingBag(T, mode="median")
    q = kt.QuantizedEmbeddingBag(T, mode="sum")
    with pytest.raises(TypeError, match="float32"):
        q(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="integer dtype"):
        q(torch.tensor([1.0, 2.0]), torch.tensor([0]))
    with pytest.raises(IndexError, match="out of range"):
        q(torch.tensor([1, 10]), torch.tensor([0]))
    assert not list(q.parameters())  # inference only: nothing to train
