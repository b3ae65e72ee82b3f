"""PyTorch drop-ins: `Embedding` and `EmbeddingBag` whose forward and backward run on this
package's kernels, and the operators under them.

    import kernels.optim, kernels.torch as kt
    emb = kt.EmbeddingBag(1_000_000, 64, mode="sum", sparse=True)   # was torch.nn.EmbeddingBag
    out = emb(ids, offsets)                       # the kernels' lookup_bag (kernel="auto")
    out.sum().backward()                          # emb.weight.grad: a coalesced sparse COO tensor
    torch.optim.SGD(emb.parameters(), lr=0.1).step()

    emb.fuse_optimizer(kernels.optim.SGD, lr=0.1) # or: the fused step, applied in the backward

Importing `kernels` never imports torch; importing `kernels.torch` does (tested with torch
2.13).

Operators (torch.library.custom_op, namespace "embedding_kernels"): `embedding`,
`embedding_bag` and their backward operators (dense, and sparse: the touched rows and their
summed gradients). Each has a fake implementation (shapes only), so `torch.compile` traces the
modules without a graph break, and an autograd formula (torch.library.register_autograd), so
`torch.autograd.gradcheck` passes in float64. `torch.jit.script` is not supported. Outside
torch.compile the functional forms call the operators' Python functions directly (through
_eager_function's autograd.Function, or plainly under no_grad): the same results without a
custom operator's dispatch.

Zero copy: a CPU tensor reaches the kernels as a NumPy view of its memory (`detach().numpy()`),
and each output is either a `torch.empty` whose NumPy view the kernel writes into (`out=`) or an
array the kernel allocated, wrapped by `torch.from_numpy`. Nothing is copied but what the kernels
themselves copy (ids of an unusual dtype or layout: n values).

Checked before any kernel runs (and so before anything is written): tensors on another device
than the CPU (ValueError naming the CPU-only support), ids that are not of an integer dtype
(TypeError), a weight that is not 2-D float32/float64 (ValueError / TypeError) or not contiguous
(ValueError). ids out of range raise the kernels' IndexError, with the id and its position.
No error changes the weight.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

import kernels
from kernels._kernel import Kernel
from kernels._validate import BAG_MODES

__all__ = ["Embedding", "EmbeddingBag", "QuantizedEmbeddingBag", "embedding", "embedding_bag"]

NAMESPACE = "embedding_kernels"
_FLOATS = (torch.float32, torch.float64)


# -- checks -----------------------------------------------------------------------------------

def _check_cpu(t: Tensor, name: str) -> None:
    if t.device.type != "cpu":
        raise ValueError(
            f"{name} is on device {t.device}: kernels.torch runs on CPU tensors only (the "
            f"kernels are CPU code); use torch.nn.Embedding / EmbeddingBag on other devices"
        )


def _check_weight(weight: Tensor) -> None:
    _check_cpu(weight, "weight")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (num_embeddings, embedding_dim), got shape "
                         f"{tuple(weight.shape)}")
    if weight.dtype not in _FLOATS:
        raise TypeError(f"weight must be float32 or float64, got {weight.dtype}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous (kernels.torch reads and updates it in "
                         "place, without a copy); call .contiguous() on it first")


def _check_ids(ids: Tensor, name: str = "input") -> None:
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    _check_cpu(ids, name)
    dt = ids.dtype
    if dt.is_floating_point or dt.is_complex or dt == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {dt}")


def _check_psw(psw: Tensor | None, weight: Tensor) -> None:
    if psw is None:
        return
    _check_cpu(psw, "per_sample_weights")
    if psw.dtype != weight.dtype:
        raise TypeError(f"per_sample_weights must have the weight's dtype {weight.dtype}, got "
                        f"{psw.dtype}")


def _kernel_name(kernel) -> str:
    """The registry name of `kernel` ("auto", a name or a kernels.Kernel); ValueError naming the
    choices otherwise."""
    if isinstance(kernel, Kernel):
        kernel = kernel.name
    if kernel != "auto":
        kernels.get_kernel(kernel)
    return kernel


def _padding(padding_idx, num_embeddings) -> int | None:
    """padding_idx as torch's modules store it: None or in [0, num_embeddings)."""
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"padding_idx must be within [-{num_embeddings}, {num_embeddings}), "
                         f"got {padding_idx}")
    return padding_idx + num_embeddings if padding_idx < 0 else padding_idx


def _np(t: Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory (no copy)."""
    return t.detach().numpy()


def _np_or_none(t: Tensor | None):
    return None if t is None else _np(t)


# -- the lookup ---------------------------------------------------------------------------------

def _lookup_forward(weight, indices, padding_idx, sparse, kernel):
    """weight[indices] by the kernels (padding_idx and sparse only matter to the backward)."""
    out = torch.empty(tuple(indices.shape) + (weight.shape[1],), dtype=weight.dtype)
    kernels.lookup(_np(weight), _np(indices), kernel=kernel, out=out.numpy())
    return out


@torch.library.custom_op(f"{NAMESPACE}::embedding", mutates_args=())
def _embedding(weight: Tensor, indices: Tensor, padding_idx: int | None, sparse: bool,
               kernel: str) -> Tensor:
    """weight[indices] by the kernels (padding_idx and sparse only matter to the backward)."""
    return _lookup_forward(weight, indices, padding_idx, sparse, kernel)


@_embedding.register_fake
def _(weight, indices, padding_idx, sparse, kernel):
    return weight.new_empty(tuple(indices.shape) + (weight.shape[1],))


def _grad_of_lookup(grad, indices, num_weights, padding_idx, kernel, sparse):
    """lookup's gradient with respect to the table: padding ids left out (as bags of one)."""
    G = _np(grad.contiguous())
    ids = _np(indices)
    if padding_idx is None:
        return kernels.lookup_grad(G, ids, num_weights, sparse=sparse, kernel=kernel)
    D = G.shape[-1]
    return kernels.lookup_bag_grad(G.reshape(-1, D), ids.reshape(-1, 1), None, num_weights,
                                   padding_idx=padding_idx, sparse=sparse, kernel=kernel)


def _lookup_backward(grad, indices, num_weights, padding_idx, kernel):
    """The dense (num_weights, D) gradient of `embedding` (a fresh np.zeros: rows no id hits
    are never written)."""
    return torch.from_numpy(_grad_of_lookup(grad, indices, num_weights, padding_idx, kernel,
                                            False))


@torch.library.custom_op(f"{NAMESPACE}::embedding_backward", mutates_args=())
def _embedding_backward(grad: Tensor, indices: Tensor, num_weights: int,
                        padding_idx: int | None, kernel: str) -> Tensor:
    """The dense (num_weights, D) gradient of `embedding` (a fresh np.zeros: rows no id hits
    are never written)."""
    return _lookup_backward(grad, indices, num_weights, padding_idx, kernel)


@_embedding_backward.register_fake
def _(grad, indices, num_weights, padding_idx, kernel):
    return grad.new_empty((num_weights, grad.shape[-1]))


def _lookup_sparse_backward(grad, indices, num_weights, padding_idx, kernel):
    """(rows, values) of `embedding`'s gradient: the sorted unique non-padding ids (int64) and
    each one's summed gradient row (kernels.SparseGrad)."""
    sg = _grad_of_lookup(grad, indices, num_weights, padding_idx, kernel, True)
    return torch.from_numpy(sg.rows), torch.from_numpy(sg.values)


@torch.library.custom_op(f"{NAMESPACE}::embedding_sparse_backward", mutates_args=())
def _embedding_sparse_backward(grad: Tensor, indices: Tensor, num_weights: int,
                               padding_idx: int | None, kernel: str) -> tuple[Tensor, Tensor]:
    """(rows, values) of `embedding`'s gradient: the sorted unique non-padding ids (int64) and
    each one's summed gradient row (kernels.SparseGrad)."""
    return _lookup_sparse_backward(grad, indices, num_weights, padding_idx, kernel)


@_embedding_sparse_backward.register_fake
def _(grad, indices, num_weights, padding_idx, kernel):
    nnz = torch.library.get_ctx().new_dynamic_size()
    return grad.new_empty((nnz,), dtype=torch.int64), grad.new_empty((nnz, grad.shape[-1]))


def _sparse_coo(rows: Tensor, values: Tensor, num_weights: int) -> Tensor:
    """The coalesced (num_weights, D) COO tensor of (rows, values), nn.Embedding(sparse=True)'s
    layout after .coalesce()."""
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, (num_weights, values.shape[-1]),
                                   is_coalesced=True, check_invariants=False)


def _mark_coalesced(param: Tensor) -> None:
    """A post-accumulate-grad hook: torch's AccumulateGrad rebuilds a sparse gradient without
    its is_coalesced flag; set it again when the indices are strictly increasing (then they are
    coalesced in fact: true of the operators' gradients, and checked, so a sum of two backward
    passes, whose indices repeat, keeps the flag off)."""
    g = param.grad
    if g is None or not g.is_sparse or g.is_coalesced() or g.sparse_dim() != 1:
        return
    idx = g._indices()[0]
    if idx.numel() < 2 or bool((idx[1:] > idx[:-1]).all()):
        g._coalesced_(True)


def _embedding_setup(ctx, inputs, output):
    weight, indices, padding_idx, sparse, kernel = inputs
    ctx.save_for_backward(indices)
    ctx.num_weights = weight.shape[0]
    ctx.padding_idx, ctx.sparse, ctx.kernel = padding_idx, sparse, kernel


def _embedding_grad(ctx, grad, eager=False):
    """The lookup's backward: through the backward operators (the registered autograd formula),
    or, eager, through the same functions called directly."""
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    (indices,) = ctx.saved_tensors
    V = ctx.num_weights
    if ctx.sparse:
        rows, values = (_lookup_sparse_backward if eager else _embedding_sparse_backward)(
            grad, indices, V, ctx.padding_idx, ctx.kernel)
        dW = _sparse_coo(rows, values, V)
    else:
        dW = (_lookup_backward if eager else _embedding_backward)(
            grad, indices, V, ctx.padding_idx, ctx.kernel)
    return dW, None, None, None, None


_embedding.register_autograd(_embedding_grad, setup_context=_embedding_setup)


def _eager_function(name, forward, setup, grad):
    """A torch.autograd.Function that calls an operator's forward, setup_context and backward
    as Python functions: used outside torch.compile, it gives the operator's results without
    its dispatch (measured: a custom operator call costs about 45 us more than the function
    under it)."""
    def fwd(ctx, *inputs):
        out = forward(*inputs)
        setup(ctx, inputs, out)
        return out

    def bwd(ctx, g):
        return grad(ctx, g, eager=True)

    return type(name, (torch.autograd.Function,),
                {"forward": staticmethod(fwd), "backward": staticmethod(bwd),
                 "__doc__": f"{forward.__name__}, eager (see _eager_function)."})


def _call(op, eager, forward, args, *differentiable):
    """The operator `op` under torch.compile; else its eager Function (_eager_function) where a
    gradient of one of `differentiable` (tensors or None) is wanted; else `forward` itself."""
    if torch.compiler.is_compiling():
        return op(*args)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in differentiable):
        return eager.apply(*args)
    return forward(*args)


_EagerLookup = _eager_function("_EagerLookup", _lookup_forward, _embedding_setup,
                               _embedding_grad)


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None, *,
              sparse: bool = False, kernel="auto") -> Tensor:
    """torch.nn.functional.embedding(input, weight, padding_idx, sparse=sparse) on the kernels:
    weight[input], shape input.shape + (D,). The gradient leaves out ids equal to padding_idx;
    sparse=True makes weight's gradient a coalesced sparse COO tensor. Any integer dtype of ids."""
    _check_weight(weight)
    _check_ids(input)
    args = (weight, input, _padding(padding_idx, weight.shape[0]), bool(sparse),
            _kernel_name(kernel))
    return _call(_embedding, _EagerLookup, _lookup_forward, args, weight)


# -- bags -----------------------------------------------------------------------------------------

def _bag_forward(weight, indices, offsets, per_sample_weights, mode, padding_idx,
                 include_last_offset, sparse, kernel):
    """kernels.lookup_bag on 1-D indices and offsets: (B, D)."""
    B = offsets.shape[0] - int(include_last_offset)
    out = torch.empty((max(B, 0), weight.shape[1]), dtype=weight.dtype)
    kernels.lookup_bag(_np(weight), _np(indices), _np(offsets), mode=mode,
                       per_sample_weights=_np_or_none(per_sample_weights),
                       padding_idx=padding_idx, include_last_offset=include_last_offset,
                       kernel=kernel, out=out.numpy())
    return out


@torch.library.custom_op(f"{NAMESPACE}::embedding_bag", mutates_args=())
def _embedding_bag(weight: Tensor, indices: Tensor, offsets: Tensor,
                   per_sample_weights: Tensor | None, mode: str, padding_idx: int | None,
                   include_last_offset: bool, sparse: bool, kernel: str) -> Tensor:
    """kernels.lookup_bag on 1-D indices and offsets: (B, D)."""
    return _bag_forward(weight, indices, offsets, per_sample_weights, mode, padding_idx,
                        include_last_offset, sparse, kernel)


@_embedding_bag.register_fake
def _(weight, indices, offsets, per_sample_weights, mode, padding_idx, include_last_offset,
      sparse, kernel):
    B = offsets.shape[0] - int(include_last_offset)
    return weight.new_empty((B, weight.shape[1]))


def _grad_of_bags(grad, weight, indices, offsets, psw, mode, padding_idx, include_last_offset,
                  kernel, sparse):
    """kernels.lookup_bag_grad: dW or a SparseGrad, and psw's gradient (None without psw)."""
    need_w = mode == "max" or psw is not None
    r = kernels.lookup_bag_grad(
        _np(grad.contiguous()), _np(indices), _np(offsets), weight.shape[0], mode=mode,
        per_sample_weights=_np_or_none(psw), padding_idx=padding_idx,
        include_last_offset=include_last_offset, weights=_np(weight) if need_w else None,
        sparse=sparse, kernel=kernel)
    return r if psw is not None else (r, None)


def _psw_out(dpsw, grad):
    return grad.new_empty((0,)) if dpsw is None else torch.from_numpy(dpsw)


def _bag_backward(grad, weight, indices, offsets, per_sample_weights, mode, padding_idx,
                  include_last_offset, kernel):
    """(dW (V, D), the gradient of per_sample_weights, or an empty tensor without them)."""
    dW, dpsw = _grad_of_bags(grad, weight, indices, offsets, per_sample_weights, mode,
                             padding_idx, include_last_offset, kernel, False)
    return torch.from_numpy(dW), _psw_out(dpsw, grad)


@torch.library.custom_op(f"{NAMESPACE}::embedding_bag_backward", mutates_args=())
def _embedding_bag_backward(grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor,
                            per_sample_weights: Tensor | None, mode: str,
                            padding_idx: int | None, include_last_offset: bool,
                            kernel: str) -> tuple[Tensor, Tensor]:
    """(dW (V, D), the gradient of per_sample_weights, or an empty tensor without them)."""
    return _bag_backward(grad, weight, indices, offsets, per_sample_weights, mode, padding_idx,
                         include_last_offset, kernel)


@_embedding_bag_backward.register_fake
def _(grad, weight, indices, offsets, per_sample_weights, mode, padding_idx,
      include_last_offset, kernel):
    psw = grad.new_empty((0,)) if per_sample_weights is None else \
        per_sample_weights.new_empty(per_sample_weights.shape)
    return weight.new_empty(weight.shape), psw


def _bag_sparse_backward(grad, weight, indices, offsets, per_sample_weights, mode, padding_idx,
                         include_last_offset, kernel):
    """(rows, values, the gradient of per_sample_weights or an empty tensor): the touched
    non-padding rows and their summed gradients (kernels.SparseGrad)."""
    sg, dpsw = _grad_of_bags(grad, weight, indices, offsets, per_sample_weights, mode,
                             padding_idx, include_last_offset, kernel, True)
    return torch.from_numpy(sg.rows), torch.from_numpy(sg.values), _psw_out(dpsw, grad)


@torch.library.custom_op(f"{NAMESPACE}::embedding_bag_sparse_backward", mutates_args=())
def _embedding_bag_sparse_backward(grad: Tensor, weight: Tensor, indices: Tensor,
                                   offsets: Tensor, per_sample_weights: Tensor | None,
                                   mode: str, padding_idx: int | None, include_last_offset: bool,
                                   kernel: str) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, values, the gradient of per_sample_weights or an empty tensor): the touched
    non-padding rows and their summed gradients (kernels.SparseGrad)."""
    return _bag_sparse_backward(grad, weight, indices, offsets, per_sample_weights, mode,
                                padding_idx, include_last_offset, kernel)


@_embedding_bag_sparse_backward.register_fake
def _(grad, weight, indices, offsets, per_sample_weights, mode, padding_idx,
      include_last_offset, kernel):
    nnz = torch.library.get_ctx().new_dynamic_size()
    psw = grad.new_empty((0,)) if per_sample_weights is None else \
        per_sample_weights.new_empty(per_sample_weights.shape)
    return (grad.new_empty((nnz,), dtype=torch.int64), grad.new_empty((nnz, weight.shape[1])),
            psw)


def _bag_setup(ctx, inputs, output):
    (weight, indices, offsets, psw, mode, padding_idx, include_last_offset, sparse,
     kernel) = inputs
    ctx.save_for_backward(weight, indices, offsets, psw)
    ctx.mode, ctx.padding_idx, ctx.include_last_offset = mode, padding_idx, include_last_offset
    ctx.sparse, ctx.kernel = sparse, kernel


def _bag_grad(ctx, grad, eager=False):
    """The bags' backward: through the backward operators (traceable: the registered autograd
    formula), or, eager, through the same functions called directly."""
    weight, indices, offsets, psw = ctx.saved_tensors
    need_w, need_psw = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
    if not (need_w or need_psw):
        return (None,) * 9
    args = (grad, weight, indices, offsets, psw, ctx.mode, ctx.padding_idx,
            ctx.include_last_offset, ctx.kernel)
    if ctx.sparse:
        rows, values, dpsw = (_bag_sparse_backward if eager else
                              _embedding_bag_sparse_backward)(*args)
        dW = _sparse_coo(rows, values, weight.shape[0])
    else:
        dW, dpsw = (_bag_backward if eager else _embedding_bag_backward)(*args)
    return (dW if need_w else None, None, None, dpsw if need_psw else None) + (None,) * 5


_embedding_bag.register_autograd(_bag_grad, setup_context=_bag_setup)


_EagerBag = _eager_function("_EagerBag", _bag_forward, _bag_setup, _bag_grad)


def _flat_bags(input, offsets, per_sample_weights, include_last_offset):
    """torch's two layouts as one: 2-D (B, N) input becomes 1-D ids with B starts (and, as in
    torch, include_last_offset does not apply to it). Returns (ids, offsets, per_sample_weights,
    include_last_offset)."""
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError("offsets has to be None if input is 2-D (fixed-size bags)")
        include_last_offset = False
        B, N = input.shape
        offsets = torch.arange(0, B * N, N, dtype=torch.int64)
        input = input.reshape(-1)
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
    elif input.dim() == 1:
        if offsets is None:
            raise ValueError("offsets has to be a 1-D tensor but got None (1-D input needs "
                             "offsets)")
        _check_ids(offsets, "offsets")
    else:
        raise ValueError(f"input has to be 1-D or 2-D, but got a {input.dim()}-D tensor")
    return input, offsets, per_sample_weights, include_last_offset


def embedding_bag(input: Tensor, weight: Tensor, offsets: Tensor | None = None,
                  mode: str = "mean", per_sample_weights: Tensor | None = None,
                  include_last_offset: bool = False, padding_idx: int | None = None, *,
                  sparse: bool = False, kernel="auto") -> Tensor:
    """torch.nn.functional.embedding_bag on the kernels: (B, D) pooled bags of 1-D input with
    offsets (B starts, or B + 1 bounds with include_last_offset=True) or 2-D (B, N) input.
    Modes "sum", "mean", "max" (and "sqrtn", beyond torch); per_sample_weights with sum, mean
    and sqrtn (torch: sum only)."""
    _check_weight(weight)
    _check_ids(input)
    _check_psw(per_sample_weights, weight)
    if mode not in BAG_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, BAG_MODES))}, got {mode!r}")
    input, offsets, per_sample_weights, last = _flat_bags(input, offsets, per_sample_weights,
                                                          include_last_offset)
    pad = _padding(padding_idx, weight.shape[0])
    args = (weight, input, offsets, per_sample_weights, mode, pad, bool(last), bool(sparse),
            _kernel_name(kernel))
    return _call(_embedding_bag, _EagerBag, _bag_forward, args, weight, per_sample_weights)


# -- the fused optimizer step ------------------------------------------------------------------

class _FusedLookup(torch.autograd.Function):
    """The lookup whose backward is the optimizer's fused step on the table (no gradient)."""

    @staticmethod
    def forward(ctx, weight, indices, opt, padding_idx, kernel):
        ctx.save_for_backward(indices)
        ctx.opt, ctx.padding_idx = opt, padding_idx
        out = torch.empty(tuple(indices.shape) + (weight.shape[1],), dtype=weight.dtype)
        kernels.lookup(_np(weight), _np(indices), kernel=kernel, out=out.numpy())
        return out

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        G, ids = _np(grad.contiguous()), _np(indices)
        if ctx.padding_idx is None:
            ctx.opt.step(ids, G)
        else:
            ctx.opt.step_bag(ids.reshape(-1, 1), None, G.reshape(-1, G.shape[-1]),
                             padding_idx=ctx.padding_idx)
        return None, None, None, None, None


class _FusedBag(torch.autograd.Function):
    """The bags whose backward is the optimizer's fused step on the table (no gradient)."""

    @staticmethod
    def forward(ctx, weight, indices, offsets, psw, opt, mode, padding_idx, include_last_offset,
                kernel):
        ctx.save_for_backward(indices, offsets, psw)
        ctx.opt, ctx.mode = opt, mode
        ctx.padding_idx, ctx.include_last_offset = padding_idx, include_last_offset
        B = offsets.shape[0] - int(include_last_offset)
        out = torch.empty((max(B, 0), weight.shape[1]), dtype=weight.dtype)
        kernels.lookup_bag(_np(weight), _np(indices), _np(offsets), mode=mode,
                           per_sample_weights=_np_or_none(psw), padding_idx=padding_idx,
                           include_last_offset=include_last_offset, kernel=kernel,
                           out=out.numpy())
        return out

    @staticmethod
    def backward(ctx, grad):
        indices, offsets, psw = ctx.saved_tensors
        ctx.opt.step_bag(_np(indices), _np(offsets), _np(grad), mode=ctx.mode,
                         per_sample_weights=_np_or_none(psw), padding_idx=ctx.padding_idx,
                         include_last_offset=ctx.include_last_offset)
        return (None,) * 9


# -- the modules --------------------------------------------------------------------------------

def _refuse_unimplemented(max_norm, scale_grad_by_freq, device, dtype):
    if max_norm is not None:
        raise NotImplementedError("max_norm is not implemented by kernels.torch (torch renorms "
                                  "the looked-up rows in place); use torch.nn's module")
    if scale_grad_by_freq:
        raise NotImplementedError("scale_grad_by_freq=True is not implemented by kernels.torch; "
                                  "use torch.nn's module")
    if device is not None and torch.device(device).type != "cpu":
        raise NotImplementedError(f"device={device!r}: kernels.torch runs on the CPU only")
    if dtype is not None and dtype not in _FLOATS:
        raise NotImplementedError(f"dtype={dtype}: kernels.torch tables are float32 or float64")


def _hook_weight(weight: Tensor) -> None:
    """Mark the module's sparse gradients coalesced after accumulation (a table created
    frozen gets no hook: it receives no gradient)."""
    if weight.requires_grad:
        weight.register_post_accumulate_grad_hook(_mark_coalesced)


class _FusedMixin:
    """The fused optimizer step shared by both modules."""

    fused_optimizer = None

    def __setstate__(self, state):
        """Unpickling and copy.deepcopy: the weight's hook (_hook_weight) again."""
        super().__setstate__(state)
        _hook_weight(self.weight)

    def fuse_optimizer(self, optimizer_class, /, *args, **kwargs):
        """Bind kernels.optim.<optimizer_class>(self.weight's memory, *args, **kwargs) to this
        module and return it: from now on the backward of a forward (with grad enabled and a
        weight that requires grad) updates the touched rows in place with that optimizer's
        fused step, and self.weight.grad stays None (torch's optimizers skip it).
        `fuse_optimizer(None)` goes back to gradients. Eager mode only: under torch.compile
        the fused forward runs outside the graph (a graph break)."""
        if optimizer_class is None:
            self.fused_optimizer = None
            return None
        _check_weight(self.weight)
        self.fused_optimizer = optimizer_class(_np(self.weight), *args, **kwargs)
        return self.fused_optimizer

    def _fused(self) -> bool:
        opt = self.fused_optimizer
        if opt is None or not (torch.is_grad_enabled() and self.weight.requires_grad):
            return False
        if opt._address != self.weight.data_ptr():
            raise RuntimeError("the fused optimizer is bound to memory the module's weight no "
                               "longer uses (the weight was replaced); call fuse_optimizer again")
        return True


class Embedding(_FusedMixin, nn.Embedding):
    """torch.nn.Embedding on this package's kernels: the same arguments, defaults,
    initialisation (normal(0, 1), padding row zeroed), `weight` parameter and state_dict, plus
    `kernel` ("auto": the kernel measured fastest for each call's sizes, or a kernel name).

    Not implemented (NotImplementedError here, never a silent difference): max_norm,
    scale_grad_by_freq=True, a device other than the CPU, tables other than float32/float64.
    ids may have any integer dtype. sparse=True gives weight a coalesced sparse COO gradient
    (torch gives the uncoalesced one; both are accepted by torch's SGD, Adagrad and SparseAdam).
    `fuse_optimizer(kernels.optim.SGD, lr=...)` applies the optimizer in the backward instead."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0,
                 scale_grad_by_freq: bool = False, sparse: bool = False,
                 _weight: Tensor | None = None, _freeze: bool = False, device=None, dtype=None,
                 kernel="auto"):
        _refuse_unimplemented(max_norm, scale_grad_by_freq, device, dtype)
        self.kernel = _kernel_name(kernel)
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type,
                         scale_grad_by_freq, sparse, _weight, _freeze, device, dtype)
        _hook_weight(self.weight)

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None, max_norm=None,
                        norm_type=2.0, scale_grad_by_freq=False, sparse=False, kernel="auto"):
        """torch.nn.Embedding.from_pretrained, with `kernel`."""
        rows, cols = embeddings.shape
        return cls(rows, cols, _weight=embeddings, _freeze=freeze, padding_idx=padding_idx,
                   max_norm=max_norm, norm_type=norm_type,
                   scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, kernel=kernel)

    def forward(self, input: Tensor) -> Tensor:
        if self._fused():
            return self._fused_forward(input)
        return embedding(input, self.weight, self.padding_idx, sparse=self.sparse,
                         kernel=self.kernel)

    @torch.compiler.disable
    def _fused_forward(self, input):
        _check_weight(self.weight)
        _check_ids(input)
        return _FusedLookup.apply(self.weight, input, self.fused_optimizer, self.padding_idx,
                                  self.kernel)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel={self.kernel!r}"


class EmbeddingBag(_FusedMixin, nn.EmbeddingBag):
    """torch.nn.EmbeddingBag on this package's kernels: the same arguments, defaults (mode
    "mean"), initialisation, `weight` parameter and state_dict, and forward(input, offsets=None,
    per_sample_weights=None), plus `kernel` ("auto" or a kernel name).

    Beyond torch: mode "sqrtn", per_sample_weights with "mean" and "sqrtn", any integer dtype
    of ids. Refused where torch accepts: include_last_offset=True whose last offset is not
    len(input) (ValueError). Not implemented (NotImplementedError here):
    max_norm, scale_grad_by_freq=True, a device other than the CPU, tables other than
    float32/float64. sparse=True gives weight a coalesced sparse COO gradient;
    `fuse_optimizer(kernels.optim.SGD, lr=...)` applies the optimizer in the backward instead."""

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm: float | None = None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                 sparse: bool = False, _weight: Tensor | None = None,
                 include_last_offset: bool = False, padding_idx: int | None = None,
                 device=None, dtype=None, kernel="auto"):
        _refuse_unimplemented(max_norm, scale_grad_by_freq, device, dtype)
        if mode not in BAG_MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, BAG_MODES))}, got "
                             f"{mode!r}")
        self.kernel = _kernel_name(kernel)
        if self.kernel != "auto" and mode not in kernels.KERNELS[self.kernel].bag_modes:
            raise NotImplementedError(f"kernel {self.kernel!r} has no mode={mode!r} bags")
        super().__init__(num_embeddings, embedding_dim, max_norm, norm_type, scale_grad_by_freq,
                         "sum" if mode == "sqrtn" else mode, sparse, _weight,
                         include_last_offset, padding_idx, device, dtype)
        self.mode = mode
        _hook_weight(self.weight)

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, max_norm=None, norm_type=2.0,
                        scale_grad_by_freq=False, mode="mean", sparse=False,
                        include_last_offset=False, padding_idx=None, kernel="auto"):
        """torch.nn.EmbeddingBag.from_pretrained, with `kernel`."""
        rows, cols = embeddings.shape
        bag = cls(rows, cols, max_norm=max_norm, norm_type=norm_type,
                  scale_grad_by_freq=scale_grad_by_freq, mode=mode, sparse=sparse,
                  _weight=embeddings, include_last_offset=include_last_offset,
                  padding_idx=padding_idx, kernel=kernel)
        bag.weight.requires_grad = not freeze
        return bag

    def forward(self, input: Tensor, offsets: Tensor | None = None,
                per_sample_weights: Tensor | None = None) -> Tensor:
        if self._fused():
            return self._fused_forward(input, offsets, per_sample_weights)
        return embedding_bag(input, self.weight, offsets, self.mode, per_sample_weights,
                             self.include_last_offset, self.padding_idx, sparse=self.sparse,
                             kernel=self.kernel)

    @torch.compiler.disable
    def _fused_forward(self, input, offsets, per_sample_weights):
        _check_weight(self.weight)
        _check_ids(input)
        _check_psw(per_sample_weights, self.weight)
        if per_sample_weights is not None and per_sample_weights.requires_grad:
            raise NotImplementedError("the fused step computes no gradient of "
                                      "per_sample_weights; detach them or fuse_optimizer(None)")
        input, offsets, psw, last = _flat_bags(input, offsets, per_sample_weights,
                                               self.include_last_offset)
        return _FusedBag.apply(self.weight, input, offsets, psw, self.fused_optimizer,
                               self.mode, self.padding_idx, last, self.kernel)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel={self.kernel!r}"


class QuantizedEmbeddingBag(nn.Module):
    """An inference-only EmbeddingBag backed by a low-precision table (kernels.quantize:
    float16, bfloat16, int8 or int4): forward(input, offsets=None, per_sample_weights=None)
    returns float32 (B, D) pooled bags of the dequantized rows, by the kernels' fused decoding
    bags (kernel="auto": the kernel measured fastest for the table's format). The table is not
    a parameter: nothing trains it (train a float32 EmbeddingBag and re-quantize its weight).
    Eager only (the call is not a registered operator, so torch.compile runs it outside the
    graph). The table's storage is shared with torch without a copy: `table.packed` of an int8
    or int4 table is what torch.ops.quantized's bag ops read.

        T = kernels.quantize(bag.weight.detach().numpy(), "int8")
        qbag = kt.QuantizedEmbeddingBag(T, mode="sum")"""

    def __init__(self, table, mode: str = "mean", include_last_offset: bool = False,
                 padding_idx: int | None = None, kernel="auto"):
        super().__init__()
        if not isinstance(table, kernels.Table):
            raise TypeError(f"table must be a kernels.Table (kernels.quantize(W, format)), got "
                            f"{type(table).__name__}")
        if mode not in BAG_MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, BAG_MODES))}, got "
                             f"{mode!r}")
        self.table = table
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)
        self.padding_idx = _padding(padding_idx, table.shape[0])
        self.kernel = _kernel_name(kernel)

    @classmethod
    def from_embedding_bag(cls, bag: nn.EmbeddingBag, format: str, kernel="auto"):
        """The quantized copy of a trained torch (or kernels.torch) EmbeddingBag's table, with
        its mode, include_last_offset and padding_idx."""
        W = bag.weight.detach().to(torch.float32).numpy()
        return cls(kernels.quantize(W, format), mode=getattr(bag, "mode", "mean"),
                   include_last_offset=bag.include_last_offset, padding_idx=bag.padding_idx,
                   kernel=kernel)

    @torch.compiler.disable
    def forward(self, input: Tensor, offsets: Tensor | None = None,
                per_sample_weights: Tensor | None = None) -> Tensor:
        _check_ids(input)
        if per_sample_weights is not None:
            _check_cpu(per_sample_weights, "per_sample_weights")
            if per_sample_weights.dtype != torch.float32:
                raise TypeError(f"per_sample_weights must be float32 for a quantized table, got "
                                f"{per_sample_weights.dtype}")
        input, offsets, psw, last = _flat_bags(input, offsets, per_sample_weights,
                                               self.include_last_offset)
        B = offsets.shape[0] - (1 if last else 0)
        out = torch.empty((B, self.table.shape[1]), dtype=torch.float32)
        kernels.lookup_bag(self.table, _np(input), _np(offsets), mode=self.mode,
                           per_sample_weights=_np_or_none(psw), padding_idx=self.padding_idx,
                           include_last_offset=last, kernel=self.kernel, out=out.numpy())
        return out

    def extra_repr(self) -> str:
        V, D = self.table.shape
        return (f"{V}, {D}, format={self.table.format!r}, mode={self.mode!r}, "
                f"kernel={self.kernel!r}")
