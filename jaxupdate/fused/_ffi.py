"""XLA typed-FFI handlers written in numba: the call frame read from C, the kernels run in place.

XLA calls a typed-FFI handler as ``XLA_FFI_Error* handler(XLA_FFI_CallFrame*)`` (the C ABI of
``jax.ffi.include_dir()/xla/ffi/api/c_api.h``, API version 0.3 in jaxlib 0.10.2). This module
reads that struct field by field as 64-bit words (x86-64 / aarch64 layout, checked against the
header's ``struct_size`` fields at every call), answers XLA's metadata query (the call frame
whose ``extension_start`` is an ``XLA_FFI_Metadata_Extension``: the handler reports the API
version it was written against and no traits) and, at the execute stage, hands the data
pointers and element counts of every buffer to an in-place kernel. The deprecated legacy
custom-call API is not used.

Argument layout of every fused call (see ``jaxupdate.fused._call``): ``args[0]`` is a small
vector of scalars in the parameters' dtype (hyperparameters already resolved and cast by the
same JAX code as the XLA path; its last element names the optimizer, the one before says
whether float32 arithmetic is widened to float64 as under x64), ``args[1]`` an int32[2]
``(lo, hi)``: the first leaf's offset ``lo + hi * 2**31`` in the flat state buffers, then
``param, grad`` leaf after leaf, then the k flat state buffers (``jaxupdate.fused._flat``: the
leaves of one dtype raveled one after the other, so each leaf's state starts where the
previous leaf's ends); the results are ``param`` per leaf, then the k state buffers, each
aliased to its operand (``input_output_aliases``), so the kernel writes through the result
pointers into the operands' own memory.

Nothing here returns an error to XLA (building an ``XLA_FFI_Error`` would need the API's
function table): every operand layout is checked in Python at trace time. The structs only
grow within an API major version (XLA checks the major version the metadata reports), and a
struct smaller than the one read here makes the handler return without touching memory.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

# c_api.h: XLA_FFI_API_MAJOR / XLA_FFI_API_MINOR of the headers this module follows
API_MAJOR, API_MINOR = 0, 3
# XLA_FFI_Extension_Metadata, XLA_FFI_ExecutionStage_EXECUTE
_EXT_METADATA = 1
_STAGE_EXECUTE = 3
# struct sizes (offsetof(last field) + sizeof(last field)) of the structs read below
_CALL_FRAME_SIZE = 168  # XLA_FFI_CallFrame up to `attrs`
_ARGS_SIZE = 40  # XLA_FFI_Args
_BUFFER_SIZE = 48  # XLA_FFI_Buffer
_API_VERSION_SIZE = 28  # XLA_FFI_Api_Version
_METADATA_SIZE = 36  # XLA_FFI_Metadata up to `traits`
_METADATA_EXT_SIZE = 32  # XLA_FFI_Metadata_Extension


def _pointer_intrinsic(numba_type, llvm_type):
    @intrinsic
    def as_pointer(typingctx, addr):
        sig = types.CPointer(numba_type)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], llvm_type.as_pointer())

        return sig, codegen

    return as_pointer


_i64p = _pointer_intrinsic(types.int64, ir.IntType(64))
_f32p = _pointer_intrinsic(types.float32, ir.FloatType())
_f64p = _pointer_intrinsic(types.float64, ir.DoubleType())
_i32p = _pointer_intrinsic(types.int32, ir.IntType(32))


@njit(cache=True)
def _metadata(ext_addr):
    """Fills XLA_FFI_Metadata for XLA's version query; 1 if this was that query."""
    ext = carray(_i64p(ext_addr), 4)
    if (ext[1] & 0xFFFFFFFF) != _EXT_METADATA:
        return 0
    if ext[0] < _METADATA_EXT_SIZE:
        return 1
    md = carray(_i64p(ext[3]), 6)
    if md[0] < _METADATA_SIZE:
        return 1
    md[1] = _API_VERSION_SIZE  # api_version.struct_size
    md[2] = 0  # api_version.extension_start
    md[3] = (API_MINOR << 32) | API_MAJOR  # major_version (low int), minor_version (high int)
    md[4] = 0  # traits (low 32 bits): none; the padding above it
    return 1


@njit(cache=True)
def _frame(frame_addr):
    """(ok, execute, nargs, args**, rets**, nrets) of an XLA_FFI_CallFrame."""
    f = carray(_i64p(frame_addr), 22)
    if f[1] != 0 and _metadata(f[1]) == 1:
        return False, False, 0, 0, 0, 0
    if f[0] < _CALL_FRAME_SIZE or f[5] < _ARGS_SIZE or f[10] < _ARGS_SIZE:
        return False, False, 0, 0, 0, 0
    execute = (f[4] & 0xFFFFFFFF) == _STAGE_EXECUTE
    return True, execute, f[7], f[9], f[14], f[12]


@njit(cache=True)
def buffer(table_addr, index):
    """(data address, element count) of buffer ``index`` of an args / rets pointer table."""
    table = carray(_i64p(table_addr), index + 1)
    buf = carray(_i64p(table[index]), 6)
    rank = buf[4]
    n = 1
    if rank > 0:
        dims = carray(_i64p(buf[5]), rank)
        for d in range(rank):
            n *= dims[d]
    return buf[3], n


@njit(cache=True)
def flat_call(frame_addr):
    """(n_leaves, n_state, args**, rets**, scalars address, scalars count, dtype code, first
    state offset) of an execute-stage call frame; n_leaves = -1 for any other call (metadata
    query, other stages, unknown structs). Operands ``2 + 2 L + k`` and results ``L + k`` give
    L (leaves) and k (flat state buffers)."""
    ok, execute, nargs, args, rets, nrets = _frame(frame_addr)
    n_leaves = nargs - nrets - 2
    n_state = nrets - n_leaves
    if not ok or not execute or n_leaves <= 0 or n_state < 0 or n_state > 3:
        return -1, 0, 0, 0, 0, 0, 0, 0
    sc_buf = carray(_i64p(carray(_i64p(args), 1)[0]), 6)
    if sc_buf[0] < _BUFFER_SIZE:
        return -1, 0, 0, 0, 0, 0, 0, 0
    sc_addr, n_sc = buffer(args, 0)
    off_addr = buffer(args, 1)[0]
    off = carray(_i32p(off_addr), 2)
    first = np.int64(off[0]) + (np.int64(off[1]) << 31)
    return n_leaves, n_state, args, rets, sc_addr, n_sc, sc_buf[2] & 0xFFFFFFFF, first


F32 = 11  # XLA_FFI_DataType_F32
F64 = 12  # XLA_FFI_DataType_F64
f32p, f64p, i64p = _f32p, _f64p, _i64p


@intrinsic
def round_like(typingctx, wide, like):
    """``wide`` (float64) rounded once to the type of ``like`` (float32 or float64)."""
    sig = like(types.float64, like)

    def codegen(context, builder, signature, args):
        if signature.return_type == types.float32:
            return builder.fptrunc(args[0], ir.FloatType())
        return args[0]

    return sig, codegen


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's ``llvm.fma``), in the type of ``a``."""
    sig = a(a, a, a)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@intrinsic
def if_wide(typingctx, marker, wide, narrow):
    """``wide`` when ``marker`` is a float64, ``narrow`` when it is a float32, decided when
    compiling: the other value is dead code and LLVM removes its computation, so a loop
    compiled for each marker type carries only its own arithmetic."""
    sig = narrow(marker, wide, narrow)

    def codegen(context, builder, signature, args):
        return args[1] if signature.args[0] == types.float64 else args[2]

    return sig, codegen
