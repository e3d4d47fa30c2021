"""Backward Triton kernels of the fused PEDCC-Loss.

The incoming gradients are per row: a_i = dL/d row_am_i and b_i = dL/d cos_iy (every reduction,
ignore_index and the MSE root are folded into them by torch autograd of reference.combine_rows), so
dL/dcos_ij = g_ij = a_i s (p_ij - [j == y_i]) + b_i [j == y_i].

dL/dx needs only the rows saved by the forward sweep (O(N*d)); dL/dW sweeps the rows once per
centroid tile, recomputing p from the saved log-sum-exp, and writes per-piece partial sums that a
finish kernel adds in a fixed order (no atomics: deterministic) before the chain through w's
normalisation.
"""
import functools

import triton
import triton.language as tl

from .fused_loss_config import size_key, sweep_configs
from .fused_loss_fwd import LOG2E, NORM_EPS, margin_logits
from .tile_dot import load_rows, sliced_dot_t


@triton.jit
def _grad_slice(off_o, x, w_y, a_s, b, off_mass, inv_x_norm, inv_wy_norm):
    """A column slice of G_i = a_i s (O'_i - q_i w^_y) + b_i w^_y and of x^_i (fp32) from the loaded
    slices of O', x and w_y. (The loads stay in the kernel: with them in this helper, torch.compile's
    analysis of what the kernel writes took x_ptr and w_ptr for written, and each call cloned the
    features and the centroids; the compile trace test caught it.)"""
    w_y = w_y.to(tl.float32) * inv_wy_norm[:, None]
    g = a_s[:, None] * (off_o - off_mass[:, None] * w_y) + b[:, None] * w_y
    return g, x.to(tl.float32) * inv_x_norm[:, None]


@triton.jit
def grad_features_kernel(x_ptr, w_ptr, labels_ptr, x_norm_ptr, w_norm_ptr, off_o_ptr, off_mass_ptr,
                         grad_am_ptr, grad_cos_ptr, dx_ptr,
                         n_rows, n_classes, dim, stride_xr, stride_xd, stride_wc, stride_wd, scale,
                         BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """dx_i = (G_i - (G_i . x^_i) x^_i) / ||x_i|| with G_i = sum_j g_ij w^_j, from the forward's
    off-target sums (O'_i = sum_{j != y} p_ij w^_j, q_i = 1 - p_iy): G_i = a_i s (O'_i - q_i w^_y) + b_i w^_y.
    G_i . x^_i is the dot product of that G_i with x^_i (a first pass over d), not a sum of p_ij cos_ij
    carried from the forward: so the projection removes all of the radial part of the G_i actually formed, whose
    rounding (half-precision probabilities in O') would otherwise leak into dx where G_i is nearly
    radial. G_i / eps where ||x_i|| <= eps (autograd of x / max(||x||, eps)). dx is written contiguous
    in dx_ptr's dtype. Labels outside [0, C) (possible with check_labels=False) read no memory."""
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale = tl.cast(scale, tl.float32)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    label_ok = row_ok & (labels >= 0) & (labels < n_classes)
    a_s = tl.load(grad_am_ptr + rows, mask=row_ok, other=0.0) * scale
    b = tl.load(grad_cos_ptr + rows, mask=row_ok, other=0.0)
    x_norm = tl.load(x_norm_ptr + rows, mask=row_ok, other=1.0)
    above = x_norm > NORM_EPS
    inv_x_norm = 1.0 / tl.maximum(x_norm, NORM_EPS)
    inv_wy_norm = 1.0 / tl.maximum(tl.load(w_norm_ptr + labels, mask=label_ok, other=1.0), NORM_EPS)
    off_mass = tl.load(off_mass_ptr + rows, mask=row_ok, other=0.0)
    radial = tl.zeros([BLOCK_R], dtype=tl.float32)
    # Two passes over d, unrolled: the first sums G . x^, the second writes the projection.
    for phase in tl.static_range(2):
        for d0 in range(0, dim, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (ds[None, :] < dim)
            g, x_hat = _grad_slice(
                tl.load(off_o_ptr + rows[:, None] * dim + ds[None, :], mask=ok, other=0.0),
                tl.load(x_ptr + rows[:, None] * stride_xr + ds[None, :] * stride_xd, mask=ok, other=0.0),
                tl.load(w_ptr + labels[:, None] * stride_wc + ds[None, :] * stride_wd, mask=ok & label_ok[:, None],
                        other=0.0),
                a_s, b, off_mass, inv_x_norm, inv_wy_norm)
            if phase == 0:
                radial += tl.sum(g * x_hat, axis=1)
            else:
                dx = tl.where(above[:, None], g - radial[:, None] * x_hat, g) * inv_x_norm[:, None]
                tl.store(dx_ptr + rows[:, None] * dim + ds[None, :], dx.to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["n_rows", "n_classes", "rows_per_piece", "rows_key", "classes_key"])
def _grad_centroids_sweep(x_ptr, w_ptr, labels_ptr, x_norm_ptr, w_norm_ptr, lse_ptr,
                          grad_am_ptr, grad_cos_ptr, part_ptr,
                          n_rows, n_classes, dim, rows_per_piece,
                          stride_xr, stride_xd, stride_wc, stride_wd,
                          scale, scale_log2, margin_log2, rows_key, classes_key,
                          UPCAST: tl.constexpr, PRECISION: tl.constexpr, D_PAD: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, D_SLICE: tl.constexpr):
    """One program: BLOCK_M centroids x one piece of the rows x one slice of d. Writes
    part[piece, j, slice] = sum_i g_ij x^_i (fp32), the gradient w.r.t. the normalised centroid.
    Roles are the forward's with rows and classes swapped: the centroid tile stays, rows stream."""
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale = tl.cast(scale, tl.float32)
    scale_log2 = tl.cast(scale_log2, tl.float32)
    margin_log2 = tl.cast(margin_log2, tl.float32)
    ONE_K: tl.constexpr = BLOCK_K == D_PAD
    SAME_TILE: tl.constexpr = (BLOCK_K == D_PAD) & (D_SLICE == D_PAD)
    n_slices = tl.cdiv(dim, D_SLICE)
    piece = tl.program_id(1) // n_slices
    d_slice = tl.program_id(1) % n_slices

    # int32 offsets inside a tile, int64 tile bases, as in the forward sweep.
    col0 = tl.program_id(0) * BLOCK_M
    m_local = tl.arange(0, BLOCK_M)
    n_local = tl.arange(0, BLOCK_N)
    cols = col0 + m_local
    col_ok = cols < n_classes
    inv_w_norm = 1.0 / tl.maximum(tl.load(w_norm_ptr + cols, mask=col_ok, other=1.0), NORM_EPS)
    w_base = w_ptr + col0.to(tl.int64) * stride_wc
    r_begin = piece * rows_per_piece
    r_end = tl.minimum(r_begin + rows_per_piece, n_rows)

    if ONE_K:
        w = load_rows(w_base, m_local, col_ok, stride_wc, stride_wd, dim, D_PAD, UPCAST)
    d_out = d_slice * D_SLICE + tl.arange(0, D_SLICE)
    d_out_ok = d_out < dim

    acc = tl.zeros([BLOCK_M, D_SLICE], dtype=tl.float32)
    for r0 in range(r_begin, r_end, BLOCK_N):
        rows = r0 + n_local
        row_ok = rows < r_end
        x_base = x_ptr + tl.cast(r0, tl.int64) * stride_xr
        labels = tl.load(labels_ptr + rows, mask=row_ok, other=0).to(tl.int32)
        inv_x_norm = 1.0 / tl.maximum(tl.load(x_norm_ptr + rows, mask=row_ok, other=1.0), NORM_EPS)
        lse_log2 = tl.load(lse_ptr + rows, mask=row_ok, other=0.0) * LOG2E
        a_s = tl.load(grad_am_ptr + rows, mask=row_ok, other=0.0) * scale
        b = tl.load(grad_cos_ptr + rows, mask=row_ok, other=0.0)
        if ONE_K:
            x = load_rows(x_base, n_local, row_ok, stride_xr, stride_xd, dim, D_PAD, UPCAST)
            dots = tl.dot(w, tl.trans(x), input_precision=PRECISION)
        else:
            dots = sliced_dot_t(w_base, m_local, col_ok, stride_wc, stride_wd, x_base, n_local, row_ok, stride_xr,
                                stride_xd, dim, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
        cos = dots * inv_w_norm[:, None] * inv_x_norm[None, :]
        is_target = cols[:, None] == labels[None, :]
        z = margin_logits(cos, is_target, scale_log2, margin_log2)
        p = tl.exp2(z - lse_log2[None, :])
        g = a_s[None, :] * (p - tl.where(is_target, 1.0, 0.0)) + tl.where(is_target, b[None, :], 0.0)
        # x^ = x / ||x|| enters through g (BLOCK_M x BLOCK_N products), not the x tile (BLOCK_N x d).
        # Padding columns are zeroed too: their p = exp(0 - lse) can be huge when every logit is negative.
        g = tl.where(col_ok[:, None] & row_ok[None, :], g * inv_x_norm[None, :], 0.0)
        if SAME_TILE:
            x_out = x
        else:
            x_out = tl.load(x_base + n_local[:, None] * stride_xr + d_out[None, :] * stride_xd,
                            mask=row_ok[:, None] & d_out_ok[None, :], other=0.0)
            if UPCAST:
                x_out = x_out.to(tl.float32)
        acc = tl.dot(g.to(x_out.dtype), x_out, acc, input_precision=PRECISION)

    at = piece.to(tl.int64) * n_classes + cols
    tl.store(part_ptr + at[:, None] * dim + d_out[None, :], acc, mask=col_ok[:, None] & d_out_ok[None, :])


@functools.lru_cache(maxsize=None)
def grad_centroids_sweep_kernel(d_pad: int, fp32: bool):
    """The dL/dW sweep, autotuned over the configs for this padded dimension and operand width."""
    return triton.autotune(configs=sweep_configs(d_pad, fp32), key=["dim", "rows_key", "classes_key"])(
        _grad_centroids_sweep)


def grad_centroids_sweep_keys(n_rows: int, n_classes: int) -> dict:
    return {"rows_key": size_key(n_rows), "classes_key": size_key(n_classes)}


@triton.jit
def _sum_pieces(part_ptr, rows, ds, ok, n_classes, dim, n_pieces, BLOCK_R: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """The (rows, ds) tile of the row pieces' partial dL/dw^, added in piece order (deterministic)."""
    g = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for k in range(0, n_pieces):
        g += tl.load(part_ptr + (k * n_classes + rows)[:, None] * dim + ds[None, :], mask=ok, other=0.0)
    return g


@triton.jit
def grad_centroids_finish_kernel(part_ptr, w_ptr, w_norm_ptr, dw_ptr, n_classes, dim, n_pieces,
                                 stride_wc, stride_wd, dw_row0, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """dw_j = (G_j - (G_j . w^_j) w^_j) / ||w_j|| (G_j / eps where ||w_j|| <= eps), G_j the sum of
    the pieces' partial gradients in piece order; written contiguous in dw_ptr's dtype, at row
    dw_row0 + j (a chunk of classes writes its rows of the whole gradient: under torch.compile a
    write into a view would copy the rest of the gradient at every chunk)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_classes
    w_norm = tl.load(w_norm_ptr + rows, mask=row_ok, other=1.0)
    above = w_norm > NORM_EPS
    inv_w_norm = 1.0 / tl.maximum(w_norm, NORM_EPS)
    radial = tl.zeros([BLOCK_R], dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (ds[None, :] < dim)
        g = _sum_pieces(part_ptr, rows, ds, ok, n_classes, dim, n_pieces, BLOCK_R, BLOCK_D)
        w = tl.load(w_ptr + rows[:, None] * stride_wc + ds[None, :] * stride_wd, mask=ok, other=0.0)
        radial += tl.sum(g * (w.to(tl.float32) * inv_w_norm[:, None]), axis=1)
    for d0 in range(0, dim, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (ds[None, :] < dim)
        g = _sum_pieces(part_ptr, rows, ds, ok, n_classes, dim, n_pieces, BLOCK_R, BLOCK_D)
        w_hat = tl.load(w_ptr + rows[:, None] * stride_wc + ds[None, :] * stride_wd, mask=ok,
                        other=0.0).to(tl.float32) * inv_w_norm[:, None]
        dw = tl.where(above[:, None], g - radial[:, None] * w_hat, g) * inv_w_norm[:, None]
        tl.store(dw_ptr + (dw_row0 + rows)[:, None] * dim + ds[None, :], dw.to(dw_ptr.dtype.element_ty), mask=ok)
