"""LLVM intrinsics for the Numba kernels: one memcpy per row, row prefetches, a single id load,
bit casts and the half-to-float conversion of the low-precision decoders.

A Numba row copy written as a loop or a slice compiles to per-element work; llvm.memcpy of the
whole row was measured faster for small rows (see README, "Speed").
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _row_pointer(context, builder, arrty, arr, row):
    a = context.make_array(arrty)(context, builder, arr)
    zero = context.get_constant(types.intp, 0)
    ptr = cgutils.get_item_pointer(context, builder, arrty, a, [row, zero], wraparound=False)
    ncols = cgutils.unpack_tuple(builder, a.shape, 2)[1]
    return ptr, ncols


@intrinsic
def copy_row(typingctx, out, i, W, j):
    """out[i, :] = W[j, :] as one llvm.memcpy; both rows must be contiguous."""
    sig = types.void(out, types.intp, W, types.intp)

    def codegen(context, builder, signature, args):
        outty, _, wty, _ = signature.args
        dst, _ = _row_pointer(context, builder, outty, args[0], args[1])
        src, ncols = _row_pointer(context, builder, wty, args[2], args[3])
        itemsize = context.get_abi_sizeof(context.get_data_type(wty.dtype))
        cgutils.raw_memcpy(builder, dst, src, ncols, itemsize)
        return context.get_dummy_value()

    return sig, codegen


def _prefetch_lines(context, builder, ptr, nbytes, rw=0, locality=3):
    """Emit llvm.prefetch (rw 0: to read, 1: to write) of every 64-byte line of nbytes from ptr."""
    i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    zero = context.get_constant(types.intp, 0)
    line = context.get_constant(types.intp, 64)
    with cgutils.for_range_slice(builder, zero, nbytes, line) as (offset, _):
        builder.call(fn, [builder.gep(i8p, [offset]), i32(rw), i32(locality), i32(1)])


def _prefetch_row_codegen(rw):
    """The code of a prefetch of every line of the contiguous row W[j, :]."""
    def codegen(context, builder, signature, args):
        wty, _ = signature.args
        src, ncols = _row_pointer(context, builder, wty, args[0], args[1])
        itemsize = context.get_abi_sizeof(context.get_data_type(wty.dtype))
        nbytes = builder.mul(ncols, context.get_constant(types.intp, itemsize))
        _prefetch_lines(context, builder, src, nbytes, rw)
        return context.get_dummy_value()
    return codegen


@intrinsic
def prefetch_row_w(typingctx, W, j):
    """prefetch_row for a row about to be written (prefetchw: the lines arrive writable)."""
    return types.void(W, types.intp), _prefetch_row_codegen(1)


@intrinsic
def prefetch_row(typingctx, W, j):
    """Ask the CPU to start loading every cache line of the contiguous row W[j, :]."""
    return types.void(W, types.intp), _prefetch_row_codegen(0)


@intrinsic
def prefetch_span(typingctx, a, i, count):
    """Ask the CPU to start loading every cache line of a[i:i + count] (a 1-D contiguous
    array)."""
    sig = types.void(a, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        aty, _, _ = signature.args
        arr = context.make_array(aty)(context, builder, args[0])
        src = cgutils.get_item_pointer(context, builder, aty, arr, [args[1]], wraparound=False)
        itemsize = context.get_abi_sizeof(context.get_data_type(aty.dtype))
        _prefetch_lines(context, builder, src,
                        builder.mul(args[2], context.get_constant(types.intp, itemsize)))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_line(typingctx, A, j):
    """Ask the CPU to start loading the first cache line of row A[j, :], to be written."""
    sig = types.void(A, types.intp)

    def codegen(context, builder, signature, args):
        aty, _ = signature.args
        src, _ = _row_pointer(context, builder, aty, args[0], args[1])
        i8p = builder.bitcast(src, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [i8p, i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def zero_rows(typingctx, A, r0, r1):
    """A[r0:r1, :] = 0 as one llvm.memset; A must be C-contiguous."""
    sig = types.void(A, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        aty, _, _ = signature.args
        start, ncols = _row_pointer(context, builder, aty, args[0], args[1])
        itemsize = context.get_abi_sizeof(context.get_data_type(aty.dtype))
        rows = builder.sub(args[2], args[1])
        nbytes = builder.mul(builder.mul(rows, ncols), context.get_constant(types.intp, itemsize))
        cgutils.memset(builder, start, nbytes, 0)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def load_id(typingctx, ids, i):
    """ids[i] read with one relaxed atomic load (a plain load on x86): the compiler may not read
    the element again, so a bounds check on the returned value holds for its use even if another
    thread is writing ids meanwhile."""
    sig = ids.dtype(ids, types.intp)

    def codegen(context, builder, signature, args):
        arrty, _ = signature.args
        a = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arrty, a, [args[1]], wraparound=False)
        align = context.get_abi_sizeof(context.get_data_type(arrty.dtype))
        return builder.load_atomic(ptr, "monotonic", align)

    return sig, codegen


@intrinsic
def fma32(typingctx, a, x, c):
    """float32 a * x + c rounded once (llvm.fma.f32: the FMA instruction where the CPU has one,
    else libm's fmaf; never an unfused multiply-add). Arguments must be float32."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f, [f, f, f]),
                                            "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def f32_of_bits(typingctx, u):
    """The float32 whose bits are the uint32 u (a bit cast: no rounding, NaN payloads kept)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def half_to_f32(typingctx, h):
    """The float32 value of the IEEE half whose bits are the low 16 of the integer h: exact
    (every half is a float32), an infinity or NaN with its sign and payload bits kept (a
    signaling NaN stays signaling, as in NumPy's conversion). Integer operations and one exact
    float subtraction for subnormal halves (operands and result normal float32, so flush-to-zero
    modes cannot change it), with selects instead of branches: a loop of them vectorizes, where
    the F16C instruction would quiet a signaling NaN and is not on every x86 CPU."""
    if not isinstance(h, types.Integer):
        return None
    sig = types.float32(h)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        f32 = ir.FloatType()
        x = args[0]
        if x.type.width < 32:
            x = builder.zext(x, i32)
        elif x.type.width > 32:
            x = builder.trunc(x, i32)
        o = builder.shl(builder.and_(x, i32(0x7FFF)), i32(13))
        exponent = builder.and_(o, i32(0x0F800000))
        normal = builder.add(o, i32(0x38000000))  # exponent rebiased: + (127 - 15) << 23
        special = builder.add(o, i32(0x70000000))  # exponent all ones: + (255 - 31) << 23
        # a subnormal m * 2**-24 as (1 + m / 1024) * 2**-14 - 2**-14, exactly
        subnormal = builder.bitcast(
            builder.fsub(builder.bitcast(builder.add(o, i32(0x38800000)), f32),
                         ir.Constant(f32, 2.0 ** -14)), i32)
        r = builder.select(builder.icmp_unsigned("==", exponent, i32(0x0F800000)), special,
                           builder.select(builder.icmp_unsigned("==", exponent, i32(0)),
                                          subnormal, normal))
        r = builder.or_(r, builder.shl(builder.and_(x, i32(0x8000)), i32(16)))
        return builder.bitcast(r, f32)

    return sig, codegen
