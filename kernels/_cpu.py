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
