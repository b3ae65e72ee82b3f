"""The same lookup and bags by PyTorch (and FBGEMM), for scale, where they are importable (never a
dependency: asv's environment has neither, so `make bench` shows these as n/a)."""
import functools

import numpy as np

from . import common


class Peers(common.Timing):
    """torch on the same data as Lookup (uniform int64 ids, n = 16_384, float32); n/a without torch.

    method "embedding": torch.nn.functional.embedding(ids, W), which allocates its output (the
    way it is used). method "index_select_out": torch.index_select(W, 0, ids, out=out) into a
    preallocated out, the form comparable to Lookup.time_lookup. torch shares the numpy arrays'
    memory (torch.from_numpy). Checked once against W[ids] bitwise. table = (vocab_size, dim).
    """

    params = [["embedding", "index_select_out"], common.TABLES]
    param_names = ["method", "table"]

    def setup(self, method, table):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        vocab_size, dim = table
        W, ids, out = common.lookup_data(vocab_size, dim)
        tW, tids = torch.from_numpy(W), torch.from_numpy(ids)
        if method == "embedding":
            self.call = functools.partial(torch.nn.functional.embedding, tids, tW)
        else:
            out2d = torch.from_numpy(out.reshape(-1, dim))
            self.call = functools.partial(torch.index_select, tW, 0, tids.reshape(-1), out=out2d)
        common.check_once(("peers", method, table), lambda: self._check(W, ids, out))

    def _check(self, W, ids, out):
        out.fill(float("nan"))
        got = self.call().numpy()
        common.assert_gathered(got.reshape(out.shape), W, ids, "torch")

    def time_lookup(self, method, table):
        self.call()


def _import_torch():
    """torch, set to the thread count of our kernels (common.ALL_THREADS); NotImplementedError
    (asv: n/a) when it is not installed."""
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    torch.set_num_threads(common.ALL_THREADS)
    return torch


def _fbgemm_bag(torch, tW, tids, bounds):
    """FBGEMM's CPU float32 pooled sum as one call: its table-batched op with a single table
    (fbgemm::dense_embedding_codegen_lookup_function, whose CPU kernel is
    split_embedding_codegen_forward_cpu: a JIT-generated EmbeddingSpMDM kernel per thread range
    of bags, rows prefetched 16 ahead). The table is the flat (V * D) float32 view of W; offsets
    are the B + 1 bounds (FBGEMM has no include_last_offset=False form). It allocates its output.
    NotImplementedError when fbgemm_gpu (fbgemm-gpu-cpu) is not importable."""
    try:
        import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
        op = torch.ops.fbgemm.dense_embedding_codegen_lookup_function
    except (ImportError, AttributeError, RuntimeError, OSError) as e:
        raise NotImplementedError(f"fbgemm_gpu is not usable: {e!r}") from None
    V, D = tW.shape
    return functools.partial(
        op,
        dev_weights=tW.reshape(-1),
        weights_offsets=torch.zeros(1, dtype=torch.int64),
        D_offsets=torch.tensor([0, D], dtype=torch.int32),
        total_D=D,
        max_D=D,
        hash_size_cumsum=torch.tensor([0, V], dtype=torch.int64),
        total_hash_size_bits=0,
        indices=tids,
        offsets=bounds,
        pooling_mode=0,  # SUM (PoolingMode in fbgemm_gpu.split_table_batched_embeddings_ops_common)
        indice_weights=None,
        feature_requires_grad=None,
    )


def _fbgemm_nbit_bag(torch, T):
    """FBGEMM's CPU inference bag of an int8 or int4 table T as one call: its table-batched
    op with one table (IntNBitTableBatchedEmbeddingBagsCodegen, EmbeddingLocation.HOST, sum,
    float32 output). Its rows hold a float16 scale and bias ahead of the codes: they receive T's
    codes, and T's scale and bias as float16 (int4: T's own; int8: rounded from float32).
    Returns (module, reference): module(ids, bounds) pools the bags of the B + 1 bounds (a new
    output); the reference is T with its int8 scale and bias rounded the same way (a table of
    ours: what FBGEMM's table holds).
    NotImplementedError when fbgemm_gpu is not importable."""
    try:
        import fbgemm_gpu  # noqa: F401
        from fbgemm_gpu.split_embedding_configs import SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, \
            PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_inference import \
            IntNBitTableBatchedEmbeddingBagsCodegen
    except (ImportError, AttributeError, RuntimeError, OSError) as e:
        raise NotImplementedError(f"fbgemm_gpu is not usable: {e!r}") from None
    V, D = T.shape
    codes = D if T.format == "int8" else D // 2
    P = T.packed
    if T.format == "int8":
        half = P[:, codes:codes + 8].copy().view(np.float32).astype(np.float16)
        same = P.copy()
        same[:, codes:codes + 8] = half.astype(np.float32).view(np.uint8)
        reference = type(T).from_packed(same)
    else:
        half = P[:, codes:codes + 4].copy().view(np.float16)
        reference = T
    module = IntNBitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[("t", V, D, SparseType.INT8 if T.format == "int8" else SparseType.INT4,
                          EmbeddingLocation.HOST)],
        device="cpu", pooling_mode=PoolingMode.SUM, output_dtype=SparseType.FP32)
    module.fill_random_weights()  # allocates its rows
    data, scale_bias = module.split_embedding_weights()[0]
    data.copy_(torch.from_numpy(P[:, :codes]))
    scale_bias.copy_(torch.from_numpy(np.ascontiguousarray(half).view(np.uint8)))
    return module, reference


class BagPeers(common.BagTiming):
    """Bags.time_bag's sum-mode bags by torch and FBGEMM, on the same data (common.bag_data:
    n = common.BAG_N_IDS uniform int64 ids, B = n / bag_length bags, float32 W); n/a when not
    importable. torch shares the numpy arrays' memory (torch.from_numpy) and runs on
    common.ALL_THREADS threads, the count our kernels use.

    method "torch_embedding_bag": torch.nn.functional.embedding_bag(ids, W, offsets, mode="sum")
    (torch's CPU bag runs FBGEMM's JIT kernels). method "fbgemm": fbgemm_gpu's table-batched
    CPU op with one table (_fbgemm_bag). Both allocate their (B, D) output: neither has an
    `out=`. Checked once per process against LOOKUP_BAG's float64 reference.
    """

    params = [["torch_embedding_bag", "fbgemm"], common.BAG_VOCAB_SIZES, common.BAG_DIMS,
              common.BAG_LENGTHS]
    param_names = ["method", "vocab_size", "dim", "bag_length"]

    def setup(self, method, vocab_size, dim, bag_length):
        torch = _import_torch()
        W, ids, offsets, _ = common.bag_data(vocab_size, dim, bag_length)
        tW, tids, toff = torch.from_numpy(W), torch.from_numpy(ids), torch.from_numpy(offsets)
        if method == "torch_embedding_bag":
            self.call = functools.partial(torch.nn.functional.embedding_bag, tids, tW, toff,
                                          mode="sum")
        else:
            bounds = torch.from_numpy(np.append(offsets, ids.shape[0]))
            self.call = _fbgemm_bag(torch, tW, tids, bounds)
        common.check_once(
            ("bag_peers", method, vocab_size, dim, bag_length),
            lambda: common.assert_bag(self.call().numpy(), W, ids, offsets, what=method),
        )

    def time_bag(self, method, vocab_size, dim, bag_length):
        self.call()


class FormatPeers(common.FormatTiming):
    """LowPrecision.time_bag's bags (n = common.FORMAT_N_IDS ids, bags of 8, sum) by torch's
    quantized bag ops on the same packed bytes (common.format_table: torch's layouts):
    torch.ops.quantized.embedding_bag_byte_rowwise_offsets (int8) and
    embedding_bag_4bit_rowwise_offsets (int4), on common.ALL_THREADS threads; n/a without torch.
    They allocate their output. Checked once per process within the summation bound of the
    float64 reference over the dequantized rows (torch fuses q * scale + bias: 1 ulp apart)."""

    params = [["int8", "int4"], [10_000, 1_000_000], [64, 128]]  # LowPrecision's dims
    param_names = ["format", "vocab_size", "dim"]
    who = "torch"

    def setup(self, format, vocab_size, dim):
        torch = _import_torch()
        T = common.format_table(format, vocab_size, dim)
        n = common.FORMAT_N_IDS
        ids = common.uniform_ids(vocab_size, shape=(n,))
        offsets = np.arange(0, n, common.FORMAT_BAG_LENGTH, dtype=np.int64)
        self.call, reference = self._peer(torch, T, torch.from_numpy(ids), offsets)
        common.check_once(
            (type(self).__name__, format, vocab_size, dim),
            lambda: common.assert_bag(self.call().numpy(), common.decoded_rows(reference, ids),
                                      np.arange(n), offsets, what=f"{self.who} {format}"))

    def _peer(self, torch, T, tids, offsets):
        """(the timed call, the table of ours its sums must match)."""
        op = {"int8": torch.ops.quantized.embedding_bag_byte_rowwise_offsets,
              "int4": torch.ops.quantized.embedding_bag_4bit_rowwise_offsets}[T.format]
        return functools.partial(op, torch.from_numpy(T.packed), tids,
                                 torch.from_numpy(offsets), mode=0), T

    def time_bag(self, format, vocab_size, dim):
        self.call()


class FormatFbgemmPeer(FormatPeers):
    """FormatPeers' bags by FBGEMM's int8/int4 inference bag (_fbgemm_nbit_bag), on
    common.ALL_THREADS threads; n/a without torch or fbgemm_gpu. It allocates its output.
    Checked once per process against the float64 reference of the table it holds."""

    who = "fbgemm"

    def _peer(self, torch, T, tids, offsets):
        module, reference = _fbgemm_nbit_bag(torch, T)
        bounds = torch.from_numpy(np.append(offsets, tids.shape[0]))
        return functools.partial(module, tids, bounds), reference


class TrainingPeers(common.TrainingTiming):
    """bench_training.SparseTraining's optimizer steps by the peers, on the same batch (n =
    common.N_IDS uniform ids, G float32) and a copy of the same table: torch's
    nn.Embedding(sparse=True) forward, (out * G).sum().backward(), optimizer.step() and
    zero_grad() (optim.SGD, Adagrad, SparseAdam at common.TRAINING_LR, torch's defaults), and
    FBGEMM's CPU TBE with EXACT_ROWWISE_ADAGRAD (forward, backward, which updates), on
    common.ALL_THREADS threads; n/a where not importable. Each includes its forward (the
    lookup), unlike SparseTraining's opt.step alone. Checked once per process: the step runs and
    leaves the table finite."""

    params = [["torch_sgd", "torch_adagrad", "torch_sparse_adam", "fbgemm_rowwise_adagrad"],
              [100_000, 1_000_000], [64]]
    param_names = ["method", "vocab_size", "dim"]

    def setup(self, method, vocab_size, dim):
        torch = _import_torch()
        G, ids = common.training_grad_data(vocab_size, dim)
        W = common.training_table(vocab_size, dim)
        if method == "fbgemm_rowwise_adagrad":
            tbe = common.fbgemm_tbe()
            if tbe is None:
                raise NotImplementedError("fbgemm_gpu is not usable")
            self.call = common.fbgemm_training_step(torch, tbe, W, ids, G)
        else:
            name = {"torch_sgd": "SGD", "torch_adagrad": "Adagrad",
                    "torch_sparse_adam": "SparseAdam"}[method]
            self.call = common.torch_training_step(torch, name, W, ids, G)
        common.check_once(("training_peers", method, vocab_size, dim), self.call)

    def time_step(self, method, vocab_size, dim):
        self.call()
