"""Forward Triton kernels of the fused PEDCC-Loss: row norms, the sweep over class tiles, and the merge
of the per-piece softmax statistics (DESIGN §2, "One sweep gives dL/dx").

Scaling by 1/||x_i|| and 1/||w_j|| is applied to the fp32 GEMM results and to the small probability
tiles, never to the operand tiles: the GEMMs run on the raw inputs in their own dtype (tensor cores
for fp16/bf16), and the O(C) and O(N) norms come from a tiny separate kernel. One consequence for
fp16: a centroid with norm below about 4e-3 (PEDCC centroids are unit vectors) overflows the
probability tile, and the gradient turns inf/NaN, never silently wrong.
"""
import functools

import triton
import triton.language as tl

from ..reference import EPS
from .fused_loss_config import size_key, sweep_configs
from .tile_dot import load_rows, sliced_dot_t

NORM_EPS = tl.constexpr(EPS)
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# The running max is raised (and the accumulators rescaled) only when a tile exceeds it by more than
# 2^8: rescaling the BLOCK_M x d accumulator costs d/BLOCK_N multiplies per logit, as much as the
# softmax itself at d = 512, and after the first tiles the max rarely moves that far. Terms stay
# below 2^8, far from fp32 overflow.
RESCALE_LOG2 = tl.constexpr(8.0)


@triton.jit
def margin_logits(cos, is_target, scale_log2, margin_log2):
    """z = s (cos - m [j == y_i]) in log2 units (scale_log2 = s log2(e), margin_log2 = s m log2(e))."""
    return cos * scale_log2 - tl.where(is_target, margin_log2, 0.0)


@triton.jit
def off_target_terms(p, is_target):
    """The tile p with the targets zeroed, and its row sums: the off-target terms dL/dx needs
    (sum_{j != y} p_ij w^_j and sum_{j != y} p_ij)."""
    p_off = tl.where(is_target, 0.0, p)
    return p_off, tl.sum(p_off, axis=1)


@triton.jit
def row_norm_kernel(t_ptr, norm_ptr, n_rows, dim, stride_r, stride_d,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """norm_ptr[r] = ||t[r, :]|| in fp32, for a (n_rows, dim) tensor of any float dtype and strides."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    squares = tl.zeros([BLOCK_R], dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        t = tl.load(t_ptr + rows[:, None] * stride_r + ds[None, :] * stride_d,
                    mask=row_ok[:, None] & (ds[None, :] < dim), other=0.0).to(tl.float32)
        squares += tl.sum(t * t, axis=1)
    tl.store(norm_ptr + rows, tl.sqrt(squares), mask=row_ok)


# Sizes that only bound loops and masks are not specialised on (fewer compiled variants); d and the
# strides are, since their divisibility decides vectorised loads.
@triton.jit(do_not_specialize=["n_rows", "n_classes", "classes_per_piece", "rows_key", "classes_key"])
def _forward_sweep(x_ptr, w_ptr, labels_ptr, x_norm_ptr, w_norm_ptr,
                   max_ptr, sum_ptr, tcos_ptr, off_sum_ptr, off_o_ptr, ref_ptr,
                   n_rows, n_classes, dim, classes_per_piece,
                   stride_xr, stride_xd, stride_wc, stride_wd,
                   scale_log2, margin_log2, rows_key, classes_key,
                   NEED_DX: tl.constexpr, FIXED_REF: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, D_SLICE: tl.constexpr):
    """One program: BLOCK_M rows x one piece of the classes x one slice of d.

    Writes, per (piece, row), with p_ij = 2^(z_ij log2(e) - max) relative to the piece's running max
    (log2 units): max, sum_j p_ij, the target cosine if the target is in the piece (else 0) and, when
    NEED_DX, the off-target sums over j != y_i: sum p_ij and the O slice sum p_ij w^_j. Leaving the
    target out keeps dL/dx accurate for confident rows: it needs O_i - w^_y = (off-target O) -
    (off-target mass) w^_y, where subtracting w^_y from a full O rounded through a half-precision GEMM
    would cancel to noise as p_iy -> 1.
    FIXED_REF: the exponents are taken against ref_ptr's per-row reference (fixed_reference.py), which
    every piece then reports as its max: no max reduction and no rescaling per tile (the running max
    costs a row reduction and a block-wide test each tile). rows_key / classes_key only key the
    autotuner.
    """
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale_log2 = tl.cast(scale_log2, tl.float32)
    margin_log2 = tl.cast(margin_log2, tl.float32)
    ONE_K: tl.constexpr = BLOCK_K == D_PAD
    SAME_TILE: tl.constexpr = (BLOCK_K == D_PAD) & (D_SLICE == D_PAD)
    n_slices = tl.cdiv(dim, D_SLICE)
    piece = tl.program_id(1) // n_slices
    d_slice = tl.program_id(1) % n_slices

    # Offsets inside a tile are int32 (the caller guarantees they fit); only the tile's base offset
    # is int64. Full int64 pointer tiles would cost registers the GEMM accumulators need.
    row0 = tl.program_id(0) * BLOCK_M
    m_local = tl.arange(0, BLOCK_M)
    n_local = tl.arange(0, BLOCK_N)
    rows = row0 + m_local
    row_ok = rows < n_rows
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=0).to(tl.int32)
    inv_x_norm = 1.0 / tl.maximum(tl.load(x_norm_ptr + rows, mask=row_ok, other=1.0), NORM_EPS)
    x_base = x_ptr + row0.to(tl.int64) * stride_xr
    c_begin = piece * classes_per_piece
    c_end = tl.minimum(c_begin + classes_per_piece, n_classes)

    if ONE_K:
        x = load_rows(x_base, m_local, row_ok, stride_xr, stride_xd, dim, D_PAD, UPCAST)
    d_out = d_slice * D_SLICE + tl.arange(0, D_SLICE)
    d_out_ok = d_out < dim

    if FIXED_REF:
        run_max = tl.load(ref_ptr + rows, mask=row_ok, other=0.0)
    else:
        run_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    target_cos = tl.zeros([BLOCK_M], dtype=tl.float32)
    off_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    off_o = tl.zeros([BLOCK_M, D_SLICE], dtype=tl.float32)
    for c0 in range(c_begin, c_end, BLOCK_N):
        cols = c0 + n_local
        col_ok = cols < c_end
        w_base = w_ptr + tl.cast(c0, tl.int64) * stride_wc
        if ONE_K:
            w = load_rows(w_base, n_local, col_ok, stride_wc, stride_wd, dim, D_PAD, UPCAST)
            dots = tl.dot(x, tl.trans(w), input_precision=PRECISION)
        else:
            dots = sliced_dot_t(x_base, m_local, row_ok, stride_xr, stride_xd, w_base, n_local, col_ok, stride_wc,
                                stride_wd, dim, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
        inv_w_norm = 1.0 / tl.maximum(tl.load(w_norm_ptr + cols, mask=col_ok, other=1.0), NORM_EPS)
        cos = dots * inv_x_norm[:, None] * inv_w_norm[None, :]
        is_target = cols[None, :] == labels[:, None]
        target_cos += tl.sum(tl.where(is_target, cos, 0.0), axis=1)
        z = tl.where(col_ok[None, :], margin_logits(cos, is_target, scale_log2, margin_log2), float("-inf"))
        if not FIXED_REF:
            tile_max = tl.max(z, axis=1)
            if tl.max(tile_max - run_max) > RESCALE_LOG2:
                new_max = tl.maximum(run_max, tile_max)
                rescale = tl.exp2(run_max - new_max)
                run_sum = run_sum * rescale
                off_sum = off_sum * rescale
                off_o = off_o * rescale[:, None]
                run_max = new_max
        p = tl.exp2(z - run_max[:, None])
        run_sum += tl.sum(p, axis=1)
        if NEED_DX:
            p_off, tile_off_sum = off_target_terms(p, is_target)
            off_sum += tile_off_sum
            if SAME_TILE:
                w_out = w
            else:
                w_out = tl.load(w_base + n_local[:, None] * stride_wc + d_out[None, :] * stride_wd,
                                mask=col_ok[:, None] & d_out_ok[None, :], other=0.0)
                if UPCAST:
                    w_out = w_out.to(tl.float32)
            p_scaled = (p_off * inv_w_norm[None, :]).to(w_out.dtype)
            off_o = tl.dot(p_scaled, w_out, off_o, input_precision=PRECISION)

    at = piece.to(tl.int64) * n_rows + rows
    scalars_ok = row_ok & (d_slice == 0)
    tl.store(max_ptr + at, run_max, mask=scalars_ok)
    tl.store(sum_ptr + at, run_sum, mask=scalars_ok)
    tl.store(tcos_ptr + at, target_cos, mask=scalars_ok)
    if NEED_DX:
        tl.store(off_sum_ptr + at, off_sum, mask=scalars_ok)
        tl.store(off_o_ptr + at[:, None] * dim + d_out[None, :], off_o, mask=row_ok[:, None] & d_out_ok[None, :])


@functools.lru_cache(maxsize=None)
def forward_sweep_kernel(d_pad: int, fp32: bool):
    """The forward sweep, autotuned over the configs for this padded dimension and operand width."""
    return triton.autotune(configs=sweep_configs(d_pad, fp32),
                           key=["dim", "rows_key", "classes_key", "NEED_DX", "FIXED_REF"])(_forward_sweep)


def forward_sweep_keys(n_rows: int, n_classes: int) -> dict:
    return {"rows_key": size_key(n_rows), "classes_key": size_key(n_classes)}


@triton.jit
def combine_pieces_kernel(max_ptr, sum_ptr, tcos_ptr, off_sum_ptr, off_o_part_ptr,
                          row_am_ptr, target_cos_ptr, lse_ptr, off_mass_ptr, off_o_out_ptr,
                          n_rows, dim, n_pieces, scale, margin_scaled,
                          NEED_DX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge the pieces of the class sweep, in piece order, into per-row results: lse_i,
    row_am_i = lse_i - s (cos_iy - m), cos_iy and, when NEED_DX, the normalised off-target sums
    1 - p_iy = sum_{j != y} p_ij and sum_{j != y} p_ij w^_j (fp32)."""
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale = tl.cast(scale, tl.float32)
    margin_scaled = tl.cast(margin_scaled, tl.float32)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    best = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for k in range(0, n_pieces):
        best = tl.maximum(best, tl.load(max_ptr + k * n_rows + rows, mask=row_ok, other=0.0))
    total = tl.zeros([BLOCK_R], dtype=tl.float32)
    target_cos = tl.zeros([BLOCK_R], dtype=tl.float32)
    off_mass = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k in range(0, n_pieces):
        at = k * n_rows + rows
        weight = tl.exp2(tl.load(max_ptr + at, mask=row_ok, other=0.0) - best)
        total += weight * tl.load(sum_ptr + at, mask=row_ok, other=1.0)
        target_cos += tl.load(tcos_ptr + at, mask=row_ok, other=0.0)
        if NEED_DX:
            off_mass += weight * tl.load(off_sum_ptr + at, mask=row_ok, other=0.0)
    lse = (best + tl.log2(total)) * LN2
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(row_am_ptr + rows, lse - (target_cos * scale - margin_scaled), mask=row_ok)
    tl.store(target_cos_ptr + rows, target_cos, mask=row_ok)
    if NEED_DX:
        tl.store(off_mass_ptr + rows, off_mass / total, mask=row_ok)
        for d0 in range(0, dim, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (ds[None, :] < dim)
            o = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
            for k in range(0, n_pieces):
                at = k * n_rows + rows
                weight = tl.exp2(tl.load(max_ptr + at, mask=row_ok, other=0.0) - best) / total
                o += weight[:, None] * tl.load(off_o_part_ptr + at[:, None] * dim + ds[None, :], mask=ok, other=0.0)
            tl.store(off_o_out_ptr + rows[:, None] * dim + ds[None, :], o, mask=ok)
