"""The N-body force op as a Triton kernel (`nbody_forces(..., impl="triton")`, CUDA tensors).

One sweep, FlashAttention's forward with Q = K = V = the points: a program holds BLOCK_M rows and
streams the points in tiles of BLOCK_N; per tile it forms the Gram tile with tl.dot (bf16 operands,
fp32 accumulation), turns it into pair weights phi'(c) in registers (diagonal and padding masked),
keeps the row maximum and the energy, and accumulates the pull sum_j phi'(c_ij) x_j with a second
tl.dot. Nothing of size C x C is stored. The tangential projection of the pull, O(C d), follows
in torch.

Why a slice axis: the pull accumulator is BLOCK_M x d fp32 in registers; at d = 512 a 64-row block
holds all of it only with BLOCK_N = 32. Configs with D_SLICE < d give each program one slice of d
and recompute the Gram tile per slice (more GEMM work, larger tiles); the autotuner picks.

Why bf16 operands: the pair weights need the cosines to about 1e-4 (the optimisers aim at the
largest cosine with temperatures down to ~5e-4, so weights carry ~20% noise at worst), which bf16
operands with fp32 accumulation give (rounding of x is 2^-9 relative, and the errors of the d
products average out); tf32 would halve the tensor-core rate, fp32 would not use tensor cores.
The CPU op's impl='tensor_core' makes the same choice.
"""
import contextlib
import functools
import math
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .. import nbody as _nbody
from .fused_loss_config import AUTOTUNE, INTERPRET, padded_dim, size_key, tile_config
from .tile_dot import sliced_dot_t

# Potential ids and constants: nbody.py's copy of csrc/nbody.h (pair_potential), as kernel constants.
POTENTIAL_IDS = {p: i for i, p in enumerate(_nbody.POTENTIALS)}
MIN_SQUARED_DISTANCE = tl.constexpr(_nbody.MIN_SQUARED_DISTANCE)
LSE_EXPONENT_CAP = tl.constexpr(_nbody.LSE_EXPONENT_CAP)
LSE_EXPONENT_FLOOR = tl.constexpr(_nbody.LSE_EXPONENT_FLOOR)
LSE_CAP_VALUE = tl.constexpr(math.exp(_nbody.LSE_EXPONENT_CAP))


@triton.jit
def _pair_weights(c, param, shift, KIND: tl.constexpr):
    """(phi(c), phi'(c)) elementwise, as pedcc::pair_potential in csrc/nbody.h (float32)."""
    if KIND == 3:  # hinge: max(0, c - tau)^2
        excess = c - param
        positive = tl.where((excess > 0) | (excess != excess), excess, 0.0)  # NaN stays NaN
        phi = positive * positive
        dphi = 2.0 * positive
    elif KIND == 2:  # lse: exp((c - shift)/t), its tangent line above the cap, 0 below the floor
        u = (c - shift) / param
        e = tl.exp(tl.minimum(u, LSE_EXPONENT_CAP, propagate_nan=tl.PropagateNan.ALL))
        beyond = u > LSE_EXPONENT_CAP
        phi = tl.where(beyond, LSE_CAP_VALUE * (1.0 + u - LSE_EXPONENT_CAP), e)
        dphi = tl.where(beyond, LSE_CAP_VALUE / param, e / param)
        below = u < LSE_EXPONENT_FLOOR
        phi = tl.where(below, 0.0, phi)
        dphi = tl.where(below, 0.0, dphi)
    else:  # coulomb (s = 1) and riesz (s = param): r^-s with r^2 = 2 - 2c, floored
        if KIND == 0:
            s = 1.0
        else:
            s = param
        r2 = tl.maximum(2.0 - 2.0 * c, MIN_SQUARED_DISTANCE)
        phi = tl.exp(-0.5 * s * tl.log(r2))
        dphi = s * phi / r2
    return phi, dphi


@triton.jit
def _load_tile(base_ptr, local_rows, row_ok, stride_r, ks, k_ok, UPCAST: tl.constexpr):
    """A (rows x ks) tile of the bf16 points; upcast to fp32 under the interpreter, whose bf16 dot
    is wrong (the values are the same bf16 numbers either way)."""
    tile = tl.load(base_ptr + local_rows[:, None] * stride_r + ks[None, :],
                   mask=row_ok[:, None] & k_ok[None, :], other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit(do_not_specialize=["n_points", "size_key"])
def _nbody_sweep(x_ptr, pull_ptr, max_ptr, energy_ptr, n_points, dim, stride_r, param, shift, size_key,
                 KIND: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, D_SLICE: tl.constexpr):
    """One program: BLOCK_M rows x one slice of d. x: (n_points, dim) bf16 with unit stride along d.
    Writes pull[rows, slice] = sum_{j != i} phi'(c_ij) x_j (fp32) and, from slice 0, max_cos[rows]
    and energy[rows]. size_key only keys the autotuner."""
    param = tl.cast(param, tl.float32)
    shift = tl.cast(shift, tl.float32)
    d_slice = tl.program_id(1)
    row0 = tl.program_id(0) * BLOCK_M
    m_local = tl.arange(0, BLOCK_M)
    n_local = tl.arange(0, BLOCK_N)
    rows = row0 + m_local
    row_ok = rows < n_points
    # Tile offsets are int32 (the wrapper checks BLOCK rows x stride fits); tile bases are int64.
    row_base = x_ptr + tl.cast(row0, tl.int64) * stride_r
    ds = d_slice * D_SLICE + tl.arange(0, D_SLICE)
    d_ok = ds < dim

    acc = tl.zeros([BLOCK_M, D_SLICE], dtype=tl.float32)
    best = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    energy = tl.zeros([BLOCK_M], dtype=tl.float32)
    for col0 in range(0, n_points, BLOCK_N):
        cols = col0 + n_local
        col_ok = cols < n_points
        col_base = x_ptr + tl.cast(col0, tl.int64) * stride_r
        # bf16 operands ignore the precision argument; upcast under the interpreter, fp32 is exact there
        gram = sliced_dot_t(row_base, m_local, row_ok, stride_r, 1, col_base, n_local, col_ok, stride_r, 1, dim,
                            BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, "ieee")
        pair_ok = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        phi, dphi = _pair_weights(gram, param, shift, KIND)
        best = tl.maximum(best, tl.max(tl.where(pair_ok, gram, float("-inf")), axis=1))
        energy += tl.sum(tl.where(pair_ok, phi, 0.0), axis=1)
        weights = tl.where(pair_ok, dphi, 0.0)
        feats = _load_tile(col_base, n_local, col_ok, stride_r, ds, d_ok, UPCAST)
        if UPCAST:
            # the GPU path's bf16 rounding of the weights (to nearest even; the interpreter's own
            # fp32 -> bf16 cast truncates), multiplied in fp32
            bits = weights.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            weights = bits.to(tl.float32, bitcast=True)
        else:
            weights = weights.to(tl.bfloat16)
        acc = tl.dot(weights, feats, acc)

    tl.store(pull_ptr + rows.to(tl.int64)[:, None] * dim + ds[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])
    if d_slice == 0:
        tl.store(max_ptr + rows, best, mask=row_ok)
        tl.store(energy_ptr + rows, energy, mask=row_ok)


def nbody_configs(d_pad: int) -> list:
    """Autotune candidates for a padded dimension: one small config under the interpreter (slices and
    a K loop whenever d > 16, so CPU tests cover both); on a GPU 64-row tiles with 256-wide slices of
    d (the first, and the only one with PEDCC_TRITON_AUTOTUNE=0), a 64 x 512 accumulator with
    BLOCK_N = 32, and 128-row tiles. Compiled for sm_90 with Triton's ptxas at d = 512 (wgmma): no
    spills in the first two, 16-24 bytes in the 128-row ones; shared memory 64-128 KB."""
    if INTERPRET:
        return [tile_config(16, 16, 16, 16, 4, 1)]
    k, widest = min(64, d_pad), min(d_pad, 512)
    candidates = [(64, 64, k, min(d_pad, 256), 8, 3), (64, 32, k, widest, 8, 3),
                  (128, 64, k, min(d_pad, 128), 8, 3), (128, 64, k, min(d_pad, 256), 8, 3)]
    unique = [tile_config(*c) for c in dict.fromkeys(candidates)]
    return unique if AUTOTUNE else unique[:1]


@functools.lru_cache(maxsize=None)
def nbody_sweep_kernel(d_pad: int):
    """The sweep, autotuned over the configs of this padded dimension (one compiled family per d_pad)."""
    return triton.autotune(configs=nbody_configs(d_pad), key=["dim", "size_key"])(_nbody_sweep)


@triton_op("pedcc_triton::nbody_forces", mutates_args=())
def nbody_forces_triton(points: torch.Tensor, potential: str, param: float,
                        shift: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """forces (C, d), max_cos (C,), energy (C,) float32 for (C, d) float32 unit rows on a CUDA device
    (or any device under TRITON_INTERPRET=1); potential, param, shift as for pk.nbody_forces (checked
    by the caller). Cosines carry bf16-operand precision (about 1e-4 absolute at d = 512); the pull is
    formed from bf16 points, so for nearly coincident points (distance ~1e-3) the direction of the
    projected force is noise, as with the CPU op's bf16 operands (use impl='simt' there)."""
    n_points, dim = points.shape
    if 128 * dim >= 2**31:
        raise ValueError(f"points: d={dim} is too large for the Triton kernel's int32 tile offsets")
    x = points.to(torch.bfloat16).contiguous()
    pull = torch.empty(n_points, dim, dtype=torch.float32, device=points.device)
    max_cos = torch.empty(n_points, dtype=torch.float32, device=points.device)
    energy = torch.empty(n_points, dtype=torch.float32, device=points.device)

    def grid(meta):
        return (triton.cdiv(n_points, meta["BLOCK_M"]), triton.cdiv(dim, meta["D_SLICE"]))

    with torch.cuda.device(points.device) if points.is_cuda else contextlib.nullcontext():
        wrap_triton(nbody_sweep_kernel(padded_dim(dim)))[grid](
            x, pull, max_cos, energy, n_points, dim, x.stride(0), param, shift, size_key(n_points),
            KIND=POTENTIAL_IDS[potential], UPCAST=INTERPRET)
    # forces = -(pull - (pull . x) x): the tangential part, in fp32 on the fp32 points
    radial = torch.linalg.vecdot(pull, points).unsqueeze_(1)
    forces = pull.neg_().addcmul_(radial, points)  # in place: no second (C, d) buffer
    return forces, max_cos, energy
