"""Triton kernels of the 'epilogue' strategy of the fused PEDCC-Loss: the cosine GEMM of a chunk of
classes with the softmax in its epilogue, so the fp32 dot products never reach memory.

What makes a one-pass epilogue possible is a reference fixed per row before the sweep
(fixed_reference.py): every term 2^(z_ij - R_i) is then bounded, with no running max and no
rescaling. The caller (epilogue_loss.py) takes this path only where that is safe for any input.
"""
import triton
import triton.language as tl

from .fused_loss_fwd import LOG2E, NORM_EPS, off_target_terms
from .gemm_loss_kernels import logit_grads_over_x_norm
from .tile_dot import sliced_dot_t


@triton.jit
def local_target(labels_ptr, rows, row_ok, first_class, n_classes_here):
    """Each row's label as an int32 offset from first_class when it lies in
    [first_class, first_class + n_classes_here), else -1 (compared in int64 first: an unchecked label
    far out of range must not wrap into the tile)."""
    local = tl.load(labels_ptr + rows, mask=row_ok, other=-1) - first_class
    return tl.where((local >= 0) & (local < n_classes_here), local, -1).to(tl.int32)


# n_rows and c0 only bound masks and shift labels: not specialised (one compiled variant for all batch
# sizes and chunks); dim, the strides and chunk_cols (P's row stride) are, since their divisibility by 16
# decides vectorised loads and stores (chunks are multiples of 256 classes but the last).
@triton.jit(do_not_specialize=["n_rows", "c0", "rows_key"])
def _logits_epilogue(x_ptr, w_ptr, labels_ptr, x_norm_ptr, w_norm_ptr, ref_ptr, p_ptr, part_sum_ptr, n_rows,
                     chunk_cols, c0, dim, stride_xr, stride_xd, stride_wc, stride_wd, scale_log2, rows_key,
                     NEED_DX: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One BLOCK_M x BLOCK_N tile of a chunk of classes [c0, c0 + chunk_cols): the dot products x_i . w_j
    (K loop over d, fp32 accumulation), then in registers cos_ij, p_ij = 2^(s log2(e) cos_ij - R_i)
    for j != y_i (the target is 0 here: its term is in the row sum already) and, per row of the tile,
    sum_j p_ij into part_sum[tile column, row]. When NEED_DX, also
    P[i, j] = p_ij / ||w_j|| in p_ptr's dtype ((n_rows, chunk_cols), contiguous) for the caller's
    GEMM P W_chunk. w_ptr points at the chunk's first centroid, w_norm_ptr at its norm.
    rows_key only keys the autotuner."""
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale_log2 = tl.cast(scale_log2, tl.float32)
    # Offsets inside a tile are int32 (the caller keeps a tile's rows of x, W and P within 2^31
    # elements); only the tiles' base offsets are int64. Tiles of int64 pointers take registers the
    # accumulator needs (ptxas, sm_90a, 128 x 128 at 8 warps, when the epilogue still summed p cos too:
    # 222 registers with them, 212 without).
    # Column tiles on the grid's first axis (up to 2^31 - 1 programs), row blocks on the second (65535).
    tile_col = tl.program_id(0)
    row0 = tl.program_id(1) * BLOCK_M
    col0 = tile_col * BLOCK_N
    m_local = tl.arange(0, BLOCK_M)
    n_local = tl.arange(0, BLOCK_N)
    rows = row0 + m_local
    row_ok = rows < n_rows
    col_ok = col0 + n_local < chunk_cols
    x_base = x_ptr + row0.to(tl.int64) * stride_xr
    w_base = w_ptr + col0.to(tl.int64) * stride_wc
    dots = sliced_dot_t(x_base, m_local, row_ok, stride_xr, stride_xd, w_base, n_local, col_ok, stride_wc,
                        stride_wd, dim, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
    inv_x_norm = 1.0 / tl.maximum(tl.load(x_norm_ptr + rows, mask=row_ok, other=1.0), NORM_EPS)
    inv_w_norm = 1.0 / tl.maximum(tl.load(w_norm_ptr + col0 + n_local, mask=col_ok, other=1.0), NORM_EPS)
    cos = dots * inv_x_norm[:, None] * inv_w_norm[None, :]
    # Labels of another chunk (or ignored rows, mapped to 0) fall outside [0, BLOCK_N): no target here.
    local_labels = local_target(labels_ptr, rows, row_ok, c0 + col0, BLOCK_N)
    is_target = n_local[None, :] == local_labels[:, None]
    ref = tl.load(ref_ptr + rows, mask=row_ok, other=0.0)
    # Columns past the chunk hold cos = 0, whose term 2^-R_i is not small: masked before the sums.
    p = tl.where(col_ok[None, :], tl.exp2(cos * scale_log2 - ref[:, None]), 0.0)
    p_off, tile_sum = off_target_terms(p, is_target)
    at = tile_col.to(tl.int64) * n_rows + rows
    tl.store(part_sum_ptr + at, tile_sum, mask=row_ok)
    if NEED_DX:
        p_base = p_ptr + row0.to(tl.int64) * chunk_cols + col0
        tl.store(p_base + m_local[:, None] * chunk_cols + n_local[None, :],
                 (p_off * inv_w_norm[None, :]).to(p_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# chunk_cols and c0 bound masks and shift labels; n_rows is also G^T's row stride, specialised like the
# forward's chunk_cols: its divisibility by 16 gives vectorised stores.
@triton.jit(do_not_specialize=["chunk_cols", "c0", "rows_key"])
def _grad_logits_epilogue(x_ptr, w_ptr, labels_ptr, x_norm_ptr, w_norm_ptr, lse_ptr, grad_am_ptr, grad_cos_ptr,
                          g_t_ptr, n_rows, chunk_cols, c0, dim, stride_xr, stride_xd, stride_wc, stride_wd,
                          scale, scale_log2, margin_log2, rows_key, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dL/dW, one BLOCK_M x BLOCK_N tile (rows x classes, the forward's roles) of a chunk of classes
    [c0, c0 + chunk_cols): the dot products x_i . w_j (K loop over d, fp32), then in registers
    g_ij / ||x_i|| (gemm_loss_kernels.logit_grads_over_x_norm, p from the saved lse), stored transposed,
    as G^T[j, i] in g_t_ptr's dtype ((chunk_cols, n_rows), contiguous), for the caller's GEMM G^T x.
    (Tiles of classes x rows hold the five per-row vectors across the accumulator's columns: 255
    registers and spills at sm_90a, against 126-244 without spills in this layout.) w_ptr points at
    the chunk's first centroid, w_norm_ptr at its norm. rows_key only keys the autotuner."""
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale = tl.cast(scale, tl.float32)
    scale_log2 = tl.cast(scale_log2, tl.float32)
    margin_log2 = tl.cast(margin_log2, tl.float32)
    # int32 offsets inside the tile from int64 bases, and the grid's axes, as in _logits_epilogue. (This
    # setup is not a helper shared with it: torch.compile's analysis of what a kernel writes took the
    # pointer parameters passed to such a helper (w_ptr, w_norm_ptr) for written, and functionalising the
    # chunk views failed in the compile trace test.)
    col0 = tl.program_id(0) * BLOCK_N
    row0 = tl.program_id(1) * BLOCK_M
    m_local = tl.arange(0, BLOCK_M)
    n_local = tl.arange(0, BLOCK_N)
    rows = row0 + m_local
    row_ok = rows < n_rows
    col_ok = col0 + n_local < chunk_cols
    x_base = x_ptr + row0.to(tl.int64) * stride_xr
    w_base = w_ptr + col0.to(tl.int64) * stride_wc
    dots = sliced_dot_t(x_base, m_local, row_ok, stride_xr, stride_xd, w_base, n_local, col_ok, stride_wc,
                        stride_wd, dim, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION)
    inv_x_norm = 1.0 / tl.maximum(tl.load(x_norm_ptr + rows, mask=row_ok, other=1.0), NORM_EPS)
    inv_w_norm = 1.0 / tl.maximum(tl.load(w_norm_ptr + col0 + n_local, mask=col_ok, other=1.0), NORM_EPS)
    cos = dots * inv_x_norm[:, None] * inv_w_norm[None, :]
    is_target = n_local[None, :] == local_target(labels_ptr, rows, row_ok, c0 + col0, BLOCK_N)[:, None]
    lse_log2 = tl.load(lse_ptr + rows, mask=row_ok, other=0.0) * LOG2E
    a_s = tl.load(grad_am_ptr + rows, mask=row_ok, other=0.0) * scale
    b = tl.load(grad_cos_ptr + rows, mask=row_ok, other=0.0)
    g = logit_grads_over_x_norm(cos, is_target, lse_log2[:, None], a_s[:, None], b[:, None], inv_x_norm[:, None],
                                scale_log2, margin_log2)
    g_base = g_t_ptr + col0.to(tl.int64) * n_rows + row0
    tl.store(g_base + n_local[None, :] * n_rows + m_local[:, None], g.to(g_t_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def grad_logits_epilogue_kernel(configs):
    """The dL/dW epilogue GEMM, autotuned over `configs` (BLOCK_M rows, BLOCK_N classes, BLOCK_K)."""
    return triton.autotune(configs=configs, key=["dim", "rows_key"])(_grad_logits_epilogue)


def logits_epilogue_kernel(configs):
    """The epilogue GEMM, autotuned over `configs` (BLOCK_M, BLOCK_N, BLOCK_K; Triton adds the
    tensors' dtypes to the key). The tile sums are zeroed before each run: the autotuner runs every
    candidate on the real buffers, and a wide-tile winner writes fewer slots than a narrow candidate
    left behind, which the fold would add."""
    return triton.autotune(configs=configs, key=["dim", "rows_key", "NEED_DX"],
                           reset_to_zero=["part_sum_ptr"])(_logits_epilogue)


@triton.jit
def fold_tiles_kernel(part_sum_ptr, n_tiles, run_sum_ptr, off_sum_ptr, o_ptr, t_ptr,
                      n_rows, dim, NEED_DX: tl.constexpr, FOLD_T: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """After a chunk's epilogue GEMM: its tiles' row sums ((n_tiles, n_rows), BLOCK_T tiles a load, then
    a fixed-order reduction: deterministic) go into the running sums (run_sum, and off_sum when NEED_DX:
    every term the epilogue sums is off-target); O gets the previous chunk's product t = P W
    (FOLD_T). No rescaling: the reference is fixed."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    chunk_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, n_tiles, BLOCK_T):
        tiles = k0 + tl.arange(0, BLOCK_T)
        at = tiles[:, None] * n_rows + rows[None, :]
        ok = (tiles[:, None] < n_tiles) & row_ok[None, :]
        chunk_sum += tl.sum(tl.load(part_sum_ptr + at, mask=ok, other=0.0), axis=0)
    tl.store(run_sum_ptr + rows, tl.load(run_sum_ptr + rows, mask=row_ok, other=0.0) + chunk_sum, mask=row_ok)
    if NEED_DX:
        tl.store(off_sum_ptr + rows, tl.load(off_sum_ptr + rows, mask=row_ok, other=0.0) + chunk_sum, mask=row_ok)
        if FOLD_T:
            for d0 in range(0, dim, BLOCK_D):
                ds = d0 + tl.arange(0, BLOCK_D)
                at_o = rows[:, None] * dim + ds[None, :]
                ok_o = row_ok[:, None] & (ds[None, :] < dim)
                o = tl.load(o_ptr + at_o, mask=ok_o, other=0.0) + tl.load(t_ptr + at_o, mask=ok_o, other=0.0)
                tl.store(o_ptr + at_o, o, mask=ok_o)
