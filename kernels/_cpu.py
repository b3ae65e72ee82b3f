"""Cache sizes of this CPU, read once from Linux sysfs (conservative defaults elsewhere)."""


def _cache_bytes(level, default):
    try:
        for index in range(8):
            base = f"/sys/devices/system/cpu/cpu0/cache/index{index}"
            with open(f"{base}/level") as f:
                if int(f.read()) != level:
                    continue
            with open(f"{base}/size") as f:
                text = f.read().strip()
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
            return int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        pass
    return default


L2_BYTES = _cache_bytes(2, 512 * 2**10)
L3_BYTES = _cache_bytes(3, 8 * 2**20)

PREFETCH_DISTANCE = 12
"""How many ids ahead the compiled gathers prefetch rows (12-16 measured best at D = 64)."""


PREFETCH_MIN_ROW_BYTES = 128
"""Rows shorter than this are not prefetched: at 32-64 bytes (one cache line) it cost the Numba
gather up to 30% and gained the Cython one nothing measurable (V = 1e6, n = 16,384 and 65,536)."""


def prefetch_distance(W):
    """PREFETCH_DISTANCE when the table W does not fit in L2 and its rows are long enough to
    gain, else 0 (prefetching rows already in cache was measured to cost time)."""
    long_rows = W.shape[1] * W.itemsize >= PREFETCH_MIN_ROW_BYTES
    return PREFETCH_DISTANCE if long_rows and W.shape[0] * abs(W.strides[0]) > L2_BYTES else 0


BAG_PREFETCH_DISTANCE = 16
"""How many ids ahead the compiled bags prefetch rows. Measured (cython_gather, n = 65,536,
V = 1e6, bags of 8, 2 threads, one interleaved run): none / 8 / 12 / 16 / 24 ahead took
0.164 / 0.153 / 0.153 / 0.153 / 0.152 ms at D = 16, 1.24 / 0.66 / 0.57 / 0.53 / 0.55 ms at D = 64
and 5.7 / 4.4 / 4.5 / 4.6 / 4.7 ms at D = 256. A bag does little besides reading rows, so even
one-line rows gain, unlike the lookup (PREFETCH_MIN_ROW_BYTES)."""


def bag_prefetch_distance(W):
    """BAG_PREFETCH_DISTANCE when the table W does not fit in L2, else 0."""
    return BAG_PREFETCH_DISTANCE if W.shape[0] * abs(W.strides[0]) > L2_BYTES else 0
