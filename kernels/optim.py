"""Sparse optimizers for one embedding table: the backward of a lookup (or of bags) and the
update of the rows it touched, in place, in one call.

    import kernels.optim
    opt = kernels.optim.Adagrad(W, lr=0.05)          # bound to the table W, as torch binds params
    for ids, G in batches:                           # G = d loss / d kernels.lookup(W, ids)
        opt.step(ids, G)                             # coalesce, then update the touched rows of W

Each optimizer is bound to one table at construction: a C-contiguous, writeable, 2-D float32 or
float64 `numpy.ndarray` (TypeError / ValueError otherwise; a low-precision table of
kernels.quantize is a TypeError: it is for inference, so train the float32 master table and
re-quantize it). Its state lives in `opt.state` (a
dict of NumPy arrays of the table's dtype, plus an int "step" where the formula needs one).

A step computes the coalesced gradient of the batch (`rows`: the sorted unique ids that occur,
`values[i]`: the sum of every gradient row of id rows[i], in id order: float64 rounded once for
float32 tables), then updates only those rows of the table and of the state. With kernel "auto"
(the default), numba_gather or cython_gather both happen in one compiled pass
(kernels/_optim_numba.py `fused_step`): the ids grouped by row in a hash table (each thread
owns the rows whose id hashes to it), then each row's gradient summed in id order in registers
and applied at once, with no (rows, D) gradient array; the same bits as
`step_sparse` of their `kernels.SparseGrad`. Other kernels compute the `SparseGrad` by their
own rule (kernels/_sparse.py) and then update. Rows no id touches keep
their bits. Nothing proportional to the vocabulary is allocated per step. Every check (ids out
of range, a grad of the wrong shape or dtype, a SparseGrad of another table) runs before any row
of the table or the state is written: an error changes nothing.

The formulas, per touched row r with coalesced gradient g (a row of D values), computed in the
table's dtype in this order:

- `SGD(W, lr)`: W[r] -= lr * g. (torch's `optim.SGD` adds each duplicate's -lr * g_k separately
  without coalescing: equal up to float rounding.)
- `Adagrad(W, lr, eps=1e-10, initial_accumulator_value=0.0)`, torch's sparse branch of
  `optim.Adagrad` (torch/optim/adagrad.py `_single_tensor_adagrad`, lr_decay = weight_decay = 0):
  state["sum"][r] += g * g; W[r] -= lr * (g / (sqrt(state["sum"][r]) + eps)). Per element state.
- `RowwiseAdagrad(W, lr, eps=1e-8, weight_decay=0.0)`, FBGEMM's EXACT_ROWWISE_ADAGRAD as its CPU
  kernel writes it (fbgemm_gpu/codegen/genscript/optimizers.py, `rowwise_adagrad`,
  `split_weight_update_cpu`, weight_decay_mode 1 = L2 when weight_decay > 0): g' = g + wd * W[r];
  state["momentum"][r] += mean(g' * g') over D; m = lr / (sqrt(momentum[r]) + eps);
  W[r] = (1 - m * wd) * W[r] - m * g. One accumulator per row. The mean of squares is summed in
  float64 and rounded once (FBGEMM sums in float32 sequentially: equal up to float rounding).
  With weight_decay = 0 this matches FBGEMM's CPU op (fbgemm-gpu-cpu 1.8.0, tested). With
  weight_decay > 0 it follows FBGEMM's formula, but that op does not: for a float32 table that
  is not shared, its CPU backward calls fbgemm's rowwise SparseAdaGrad with weight_decay=0
  (embedding_backward_split_cpu_template.cpp), so it ignores the decay (measured: the same
  weights as weight_decay = 0).
- `SparseAdam(W, lr, betas=(0.9, 0.999), eps=1e-8)`, torch's lazy `optim.SparseAdam`
  (torch/optim/_functional.py `sparse_adam`): one step count per table, incremented by every step
  (an empty batch too, as torch does); only touched rows of exp_avg and exp_avg_sq move:
  exp_avg[r] += (g - exp_avg[r]) * (1 - b1); exp_avg_sq[r] += (g*g - exp_avg_sq[r]) * (1 - b2);
  step_size = lr * sqrt(1 - b2**step) / (1 - b1**step) (in float64);
  W[r] += -step_size * (exp_avg[r] / (sqrt(exp_avg_sq[r]) + eps)).

Calls:

- `opt.step(ids, grad)`: grad = d loss / d lookup(W, ids), shape ids.shape + (D,), the table's
  dtype.
- `opt.step_bag(ids, offsets, grad_out, *, mode="sum", per_sample_weights=None,
  padding_idx=None, include_last_offset=False)`: grad_out = d loss / d lookup_bag(W, ...), shape
  (B, D). Padding ids are left out. (The gradient of per_sample_weights is not computed.)
- `opt.step_sparse(sparse_grad)`: an already-computed `kernels.SparseGrad` of this table (its
  vocab_size, dim and dtype must be the table's; its rows sorted, unique and in range).
- `opt.state_dict()` (a deep copy: {"state": ..., "hyperparameters": ...}) and
  `opt.load_state_dict(sd)`, which checks every key, array shape and dtype and every
  hyperparameter before changing anything.

`kernel=` at construction ("auto", a kernel name or a Kernel) picks the kernel that computes the
sparse gradient. The row updates are compiled loops (kernels/_optim_numba.py): each touched row is
updated by one thread, so the result is the same bits for any thread count
(`kernels.num_threads`).

Threads: two optimizers on two different tables may step at once from two Python threads (the
result is the same as stepping them one after the other). Stepping one table from two threads
at once is refused: while a step (or step_bag, step_sparse, load_state_dict) runs on a table,
another call on the same table, from any optimizer bound to the same array, raises RuntimeError
and changes nothing. (The table is recognised by the address of its first element: two
optimizers bound to different, overlapping views of one buffer are not detected; their
concurrent updates would race, element by element.)
"""
from __future__ import annotations

import copy
import math
import numbers
import threading

import numpy as np

import kernels
from kernels._optim_numba import ADAGRAD as _ADAGRAD
from kernels._optim_numba import ROWWISE_ADAGRAD as _ROWWISE_ADAGRAD
from kernels._optim_numba import SGD as _SGD
from kernels._optim_numba import SPARSE_ADAM as _SPARSE_ADAM
from kernels import _bag_math
from kernels._ops import LOOKUP_BAG_GRAD, LOOKUP_GRAD
from kernels._optim_numba import fused_step as _fused_step
from kernels._optim_numba import update as _apply_rows
from kernels._validate import float_array, refuse_table

__all__ = ["SGD", "Adagrad", "RowwiseAdagrad", "SparseAdam"]

_busy: set[int] = set()
"""Addresses of the tables a call is updating now (see the module doc, Threads)."""
_busy_lock = threading.Lock()


def _busy_error():
    return RuntimeError("another thread is updating this table now: stepping one table from two "
                        "threads at once is refused (see kernels.optim); nothing was changed")


def _check_table(weights):
    refuse_table(weights)
    if not isinstance(weights, np.ndarray) or type(weights) not in (np.ndarray, np.memmap):
        raise TypeError(
            f"weights must be a numpy.ndarray (updated in place), got {type(weights).__name__}"
        )
    if weights.ndim != 2:
        raise ValueError(f"weights must be 2-D (vocab_size, dim), got shape {weights.shape}")
    dt = weights.dtype
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)) or not dt.isnative:
        raise TypeError(f"weights must be float32 or float64, got {dt}")
    if not weights.flags.c_contiguous:
        raise ValueError("weights must be C-contiguous (the rows are updated in place)")
    if not weights.flags.writeable:
        raise ValueError("weights must be writeable (the rows are updated in place)")
    return weights


def _real(name, x):
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {x!r}")
    return float(x)


def _check_nonneg(name, x):
    v = _real(name, x)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {x!r}")
    return v


def _check_positive(name, x):
    v = _real(name, x)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be finite and > 0, got {x!r}")
    return v


def _check_betas(betas):
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair of numbers, got {betas!r}") from None
    out = []
    for i, b in enumerate((b1, b2)):
        v = _real(f"betas[{i}]", b)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {b!r}")
        out.append(v)
    return tuple(out)


def _check_kernel(kernel):
    from kernels._kernel import Kernel
    from kernels._registry import get_kernel

    if isinstance(kernel, Kernel) or kernel == "auto":
        return kernel
    get_kernel(kernel)  # ValueError naming the known kernels
    return kernel


class _Optimizer:
    """One table, its state, and the three ways of stepping it."""

    _state_keys: frozenset = frozenset()
    """The keys of opt.state (each subclass's)."""

    def __init__(self, weights, lr, kernel):
        self._weights = _check_table(weights)
        self.lr = _check_nonneg("lr", lr)
        self.kernel = _check_kernel(kernel)
        self._address = self.weights.__array_interface__["data"][0]
        self.state: dict = {}

    @property
    def weights(self) -> np.ndarray:
        """The table this optimizer updates (bound at construction)."""
        return self._weights

    # -- hyperparameters, by subclass -----------------------------------------------------------

    def _hyperparameters(self) -> dict:
        return {"lr": self.lr}

    @staticmethod
    def _checked_hyperparameters(h) -> dict:
        return {"lr": _check_nonneg("lr", h["lr"])}

    def _state_shape(self, name):
        """The shape of state array `name`: the table's, unless a subclass says otherwise."""
        return self._weights.shape

    # -- the calls ------------------------------------------------------------------------------

    def _check_state(self):
        """The state arrays are still this table's (a caller may have replaced one in
        opt.state): RuntimeError before anything is written, never a write outside them."""
        W = self._weights
        if not isinstance(self.state, dict) or set(self.state) != self._state_keys:
            raise RuntimeError(f"opt.state must hold exactly the keys {sorted(self._state_keys)}; "
                               "restore it with load_state_dict")
        for name, a in self.state.items():
            if name == "step":
                ok = isinstance(a, numbers.Integral) and not isinstance(a, (bool, np.bool_))
            else:
                ok = (type(a) is np.ndarray and a.shape == self._state_shape(name) and
                      a.dtype == W.dtype and a.flags.c_contiguous and a.flags.writeable)
            if not ok:
                raise RuntimeError(f"opt.state[{name!r}] was replaced by something that is not "
                                   "this table's state; restore it with load_state_dict")

    def _claim(self):
        self._check_state()
        with _busy_lock:
            if self._address in _busy:
                raise _busy_error()
            _busy.add(self._address)

    def _release(self):
        with _busy_lock:
            _busy.discard(self._address)

    def _check_grad_dtype(self, G, name):
        if G.dtype != self.weights.dtype:
            raise TypeError(f"{name} must have the table's dtype {self.weights.dtype}, "
                            f"got {G.dtype}")

    def step(self, ids, grad):
        """The backward of kernels.lookup(W, ids) for upstream gradient `grad` (shape
        ids.shape + (dim,)), then the update of the rows it touched."""
        self._claim()
        try:
            G, _ = float_array(grad, "grad")
            self._check_grad_dtype(G, "grad")
            V, D = self.weights.shape
            ids_shape = np.shape(ids)
            if G.shape != tuple(ids_shape) + (D,):
                raise ValueError(f"grad must have shape ids.shape + (dim,) = {tuple(ids_shape)} "
                                 f"+ ({D},), got {G.shape}")
            if self._fused:
                _, G2, _, _, flat, _ = LOOKUP_GRAD.check(G, ids, V)
                self._apply(G=G2, ids=flat)
            else:
                sg = kernels.lookup_grad(G, ids, V, sparse=True, kernel=self.kernel)
                self._apply(sg.rows, sg.values)
        finally:
            self._release()

    def step_bag(self, ids, offsets, grad_out, *, mode="sum", per_sample_weights=None,
                 padding_idx=None, include_last_offset=False):
        """The backward of kernels.lookup_bag(W, ids, offsets, ...) for upstream gradient
        `grad_out` (B, dim), then the update of the rows it touched."""
        self._claim()
        try:
            G, _ = float_array(grad_out, "grad_out")
            self._check_grad_dtype(G, "grad_out")
            V, D = self.weights.shape
            if G.ndim != 2 or G.shape[1] != D:
                raise ValueError(f"grad_out must have shape (number of bags, dim) = (B, {D}), "
                                 f"got {G.shape}")
            need_w = mode == "max" or per_sample_weights is not None
            W = self.weights if need_w else None
            if self._fused and mode != "max":
                G, _, _, flat, off, mode, psw, pad, _, _ = LOOKUP_BAG_GRAD.check(
                    G, ids, offsets, V, mode, per_sample_weights, padding_idx,
                    include_last_offset, W)
                flat, off, coef = _bag_math.kept_entries(flat, off, mode, psw, pad)
                self._apply(G=G, ids=np.ascontiguousarray(flat), offsets=off, coef=coef)
                return
            sg = kernels.lookup_bag_grad(
                G, ids, offsets, V, mode=mode, per_sample_weights=per_sample_weights,
                padding_idx=padding_idx, include_last_offset=include_last_offset,
                weights=W, sparse=True, kernel=self.kernel)
            if isinstance(sg, tuple):  # (the table's gradient, that of per_sample_weights)
                sg = sg[0]
            self._apply(sg.rows, sg.values)
        finally:
            self._release()

    def step_sparse(self, sparse_grad):
        """Apply an already-computed sparse gradient of this table."""
        self._claim()
        try:
            rows, values = self._check_sparse(sparse_grad)
            self._apply(rows, values)
        finally:
            self._release()

    def _check_sparse(self, sg):
        V, D = self.weights.shape
        try:
            rows, values, vocab_size = sg.rows, sg.values, sg.vocab_size
        except AttributeError:
            raise TypeError(f"sparse_grad must be a kernels.SparseGrad, got {type(sg).__name__}"
                            ) from None
        if vocab_size != V:
            raise ValueError(f"sparse_grad has vocab_size {vocab_size}, the table has {V} rows")
        if not isinstance(values, np.ndarray) or values.ndim != 2 or values.shape[1] != D:
            raise ValueError(f"sparse_grad.values must be (number of rows, {D}), got shape "
                             f"{np.shape(values)}")
        self._check_grad_dtype(values, "sparse_grad.values")
        for name, a in (("the table", self.weights), *((f"state {k!r}", v) for k, v in
                                                       self.state.items()
                                                       if isinstance(v, np.ndarray))):
            if np.may_share_memory(values, a):
                raise ValueError(f"sparse_grad.values must not overlap {name} (it is updated "
                                 "while they are read)")
        if not isinstance(rows, np.ndarray) or rows.dtype != np.int64 or \
                rows.shape != (values.shape[0],):
            raise ValueError(f"sparse_grad.rows must be int64 of shape ({values.shape[0]},), got "
                             f"{getattr(rows, 'dtype', type(rows).__name__)} {np.shape(rows)}")
        if rows.shape[0] and (rows[0] < 0 or rows[-1] >= V or
                              not bool(np.all(rows[1:] > rows[:-1]))):
            raise ValueError(f"sparse_grad.rows must be sorted, unique and in [0, {V})")
        return rows, values

    @property
    def _fused(self) -> bool:
        """Whether step and step_bag run the fused compiled pass (kernel "auto", numba_gather or
        cython_gather: the same bits as their coalesced gradient, then the update)."""
        from kernels._registry import get_kernel

        return self.kernel == "auto" or get_kernel(self.kernel).compiled

    def _rule(self):
        """(optimizer code, hyperparameters, state arrays by kernels._optim_numba's names) for
        one step; called once per step."""
        raise NotImplementedError

    def _apply(self, rows=None, values=None, *, G=None, ids=None, offsets=None, coef=None):
        """One step's update: of the coalesced (rows, values), or fused from the gradient rows
        of G at checked ids (bags: bounded by offsets, G[bag] scaled by coef; see
        _optim_numba.fused_step)."""
        which, hyper, state = self._rule()
        if G is None:
            _apply_rows(which, self.weights, rows, values, hyper, **state)
        else:
            _fused_step(which, self.weights, G, ids, hyper, **state, offsets=offsets,
                        coef=coef)

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """A deep copy of the state and the hyperparameters."""
        return {"state": copy.deepcopy(self.state),
                "hyperparameters": dict(self._hyperparameters())}

    def load_state_dict(self, state_dict) -> None:
        """Restore a state_dict() (copies of its arrays become opt.state); every key, shape,
        dtype and hyperparameter is checked first, so a bad one raises (ValueError / TypeError)
        and changes nothing."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "hyperparameters"}:
            raise ValueError("state_dict must be a dict with the keys 'state' and "
                             "'hyperparameters' (from opt.state_dict())")
        st, hyper = state_dict["state"], state_dict["hyperparameters"]
        want = self._state_keys
        if not isinstance(st, dict) or set(st) != want:
            raise ValueError(f"state_dict['state'] must have the keys {sorted(want)}, got "
                             f"{sorted(st) if isinstance(st, dict) else type(st).__name__}")
        if not isinstance(hyper, dict) or set(hyper) != set(self._hyperparameters()):
            raise ValueError(f"state_dict['hyperparameters'] must have the keys "
                             f"{sorted(self._hyperparameters())}, got {hyper!r}")
        dtype = self._weights.dtype
        new = {}
        for name, value in st.items():
            if name == "step":
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
                        or value < 0:
                    raise ValueError(f"state 'step' must be an integer >= 0, got {value!r}")
                new[name] = int(value)
                continue
            shape = self._state_shape(name)
            if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
                raise ValueError(
                    f"state {name!r} must be an array of shape {shape} and dtype {dtype}, got "
                    f"{getattr(value, 'dtype', type(value).__name__)} {np.shape(value)}")
            new[name] = np.array(value, order="C", copy=True)
        checked = self._checked_hyperparameters(hyper)
        with _busy_lock:  # as _claim, without its check of the state this call replaces
            if self._address in _busy:
                raise _busy_error()
            _busy.add(self._address)
        try:
            self.state = new
            self._set_hyperparameters(checked)
        finally:
            self._release()

    def _set_hyperparameters(self, h):
        for k, v in h.items():
            setattr(self, k, v)

    def __repr__(self):
        V, D = self.weights.shape
        hp = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters().items())
        return f"<{type(self).__name__} of a ({V}, {D}) {self.weights.dtype} table: {hp}>"


class SGD(_Optimizer):
    """W[r] -= lr * g for every touched row r (torch's optim.SGD on a sparse gradient)."""

    _state_keys = frozenset(())

    def __init__(self, weights, lr, *, kernel="auto"):
        super().__init__(weights, lr, kernel)

    def _rule(self):
        return _SGD, (self.lr,), {}


class Adagrad(_Optimizer):
    """torch's sparse Adagrad: state["sum"][r] += g * g; W[r] -= lr * g / (sqrt(sum[r]) + eps),
    per element, touched rows only."""

    _state_keys = frozenset(("sum",))

    def __init__(self, weights, lr, eps=1e-10, initial_accumulator_value=0.0, *, kernel="auto"):
        super().__init__(weights, lr, kernel)
        self.eps = _check_positive("eps", eps)
        init = _check_nonneg("initial_accumulator_value", initial_accumulator_value)
        self.initial_accumulator_value = init
        W = self.weights
        self.state = {"sum": np.zeros(W.shape, W.dtype) if init == 0.0
                      else np.full(W.shape, init, W.dtype)}

    def _hyperparameters(self):
        return {"lr": self.lr, "eps": self.eps}

    @staticmethod
    def _checked_hyperparameters(h):
        return {"lr": _check_nonneg("lr", h["lr"]), "eps": _check_positive("eps", h["eps"])}

    def _rule(self):
        return _ADAGRAD, (self.lr, self.eps), {"A": self.state["sum"]}


class RowwiseAdagrad(_Optimizer):
    """FBGEMM's EXACT_ROWWISE_ADAGRAD: one accumulator per row, state["momentum"][r] += the mean
    of g'^2 over the row (g' = g + weight_decay * W[r]); m = lr / (sqrt(momentum[r]) + eps);
    W[r] = (1 - m * weight_decay) * W[r] - m * g."""

    _state_keys = frozenset(("momentum",))

    def __init__(self, weights, lr, eps=1e-8, weight_decay=0.0, *, kernel="auto"):
        super().__init__(weights, lr, kernel)
        self.eps = _check_positive("eps", eps)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)
        self.state = {"momentum": np.zeros(self.weights.shape[0], self.weights.dtype)}

    def _hyperparameters(self):
        return {"lr": self.lr, "eps": self.eps, "weight_decay": self.weight_decay}

    def _state_shape(self, name):
        return self._weights.shape[:1]

    @staticmethod
    def _checked_hyperparameters(h):
        return {"lr": _check_nonneg("lr", h["lr"]), "eps": _check_positive("eps", h["eps"]),
                "weight_decay": _check_nonneg("weight_decay", h["weight_decay"])}

    def _rule(self):
        return (_ROWWISE_ADAGRAD, (self.lr, self.eps, self.weight_decay, 1.0),
                {"M": self.state["momentum"]})


class SparseAdam(_Optimizer):
    """torch's lazy SparseAdam: one step count per table; exp_avg and exp_avg_sq move only at
    touched rows; W[r] += -step_size * exp_avg[r] / (sqrt(exp_avg_sq[r]) + eps) with
    step_size = lr * sqrt(1 - b2**step) / (1 - b1**step)."""

    _state_keys = frozenset(("step", "exp_avg", "exp_avg_sq"))

    def __init__(self, weights, lr, betas=(0.9, 0.999), eps=1e-8, *, kernel="auto"):
        super().__init__(weights, lr, kernel)
        self.betas = _check_betas(betas)
        self.eps = _check_positive("eps", eps)
        W = self.weights
        self.state = {"step": 0, "exp_avg": np.zeros(W.shape, W.dtype),
                      "exp_avg_sq": np.zeros(W.shape, W.dtype)}

    def _hyperparameters(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps}

    @staticmethod
    def _checked_hyperparameters(h):
        return {"lr": _check_nonneg("lr", h["lr"]), "betas": _check_betas(h["betas"]),
                "eps": _check_positive("eps", h["eps"])}

    def _rule(self):
        self.state["step"] += 1
        step = self.state["step"]
        b1, b2 = self.betas
        step_size = self.lr * math.sqrt(1.0 - b2 ** step) / (1.0 - b1 ** step)
        return (_SPARSE_ADAM, (-step_size, self.eps, 1.0 - b1, 1.0 - b2),
                {"A": self.state["exp_avg"], "B": self.state["exp_avg_sq"]})
