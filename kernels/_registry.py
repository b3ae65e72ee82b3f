"""The registry: the one list of kernels. `kernels.KERNELS`, the benchmarks, the tests'
parametrization and the reports all read it. Adding a kernel is its module plus one line in
`kernels/__init__.py` that registers it."""
from __future__ import annotations

from kernels._kernel import Kernel
from kernels._ops import operation_named

KERNELS: dict[str, Kernel] = {}
"""Every registered kernel by name, in registration order."""


def register(kernel: Kernel) -> Kernel:
    """Add a kernel to the registry (its name must be new)."""
    if kernel.name in KERNELS:
        raise ValueError(f"a kernel named {kernel.name!r} is already registered")
    if kernel.name == "auto":
        raise ValueError("'auto' is reserved for the measured choice")
    KERNELS[kernel.name] = kernel
    return kernel


def get_kernel(kernel) -> Kernel:
    """The Kernel for a name or a Kernel; ValueError for an unknown name ("auto" is resolved by
    the operations, which know the sizes)."""
    if isinstance(kernel, Kernel):
        return kernel
    try:
        return KERNELS[kernel]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown kernel {kernel!r}; choose 'auto' or one of {', '.join(sorted(KERNELS))}"
        ) from None


def kernels_implementing(op, fmt) -> list[str]:
    """Names of the registered kernels that implement (operation, format), in registry order."""
    op = operation_named(op)
    return [name for name, k in KERNELS.items() if k.implements(op, fmt)]


def names(*, compiled: bool | None = None, family: str | None = None) -> list[str]:
    """Registered kernel names, optionally only those with the given traits."""
    return [
        name
        for name, k in KERNELS.items()
        if (compiled is None or k.compiled == compiled) and (family is None or k.family == family)
    ]
