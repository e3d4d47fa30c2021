"""Triton kernels of the 'gemm' strategy of the fused PEDCC-Loss: the softmax work on one chunk of
raw dot products x_i . w_j that a library GEMM (cuBLAS through torch.mm) computed.

The chunk (N x chunk_cols, fp32) is read twice: once for the row maxima, once for the exponentials,
so every probability written is relative to the final maximum of the chunk and lies in [0, 1] (no
overflow in fp16, no rescaling of a written tile). One program per row block does both; with few
rows the columns are also cut into pieces (chunk_piece_max_kernel, chunk_softmax_kernel with SPLIT,
chunk_merge_kernel) so that the grid still fills the GPU. Accumulators run across chunks in
log2 units, as in the sweep kernels (fused_loss_fwd.py); x_norm and w_norm scale the dot products
here, so the GEMMs run on the raw inputs.
"""
import triton
import triton.language as tl

from .fused_loss_fwd import LN2, LOG2E, NORM_EPS, margin_logits, off_target_terms


@triton.jit
def _chunk_cosines(dots_ptr, w_norm_ptr, rows, row_ok, inv_x_norm, local_labels, cols, chunk_cols,
                   scale_log2, margin_log2):
    """cos and the margin logits z (log2 units, -inf outside the chunk) of a (rows, cols) tile."""
    col_ok = cols < chunk_cols
    dots = tl.load(dots_ptr + rows[:, None] * chunk_cols + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                   other=0.0)
    inv_w_norm = 1.0 / tl.maximum(tl.load(w_norm_ptr + cols, mask=col_ok, other=1.0), NORM_EPS)
    cos = dots * inv_x_norm[:, None] * inv_w_norm[None, :]
    is_target = cols[None, :] == local_labels[:, None]
    z = tl.where(col_ok[None, :], margin_logits(cos, is_target, scale_log2, margin_log2), float("-inf"))
    return cos, z, is_target, inv_w_norm, col_ok


@triton.jit
def _piece_max(dots_ptr, w_norm_ptr, rows, row_ok, inv_x_norm, local_labels, col_begin, n_cols, chunk_cols,
               scale_log2, margin_log2, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row maxima of z and the target cosine (0 when the target is elsewhere) over the chunk's
    columns [col_begin, col_begin + n_cols)."""
    piece_max = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    target_cos = tl.zeros([BLOCK_R], dtype=tl.float32)
    for offset in range(0, n_cols, BLOCK_C):
        cols = col_begin + offset + tl.arange(0, BLOCK_C)
        cos, z, is_target, _, _ = _chunk_cosines(dots_ptr, w_norm_ptr, rows, row_ok, inv_x_norm, local_labels,
                                                 cols, chunk_cols, scale_log2, margin_log2)
        target_cos += tl.sum(tl.where(is_target, cos, 0.0), axis=1)
        piece_max = tl.maximum(piece_max, tl.max(z, axis=1))
    return piece_max, target_cos


@triton.jit
def _fold_chunk(rows, row_ok, old_max, new_max, chunk_sum, chunk_tcos, chunk_off_sum,
                run_max_ptr, run_sum_ptr, tcos_ptr, off_sum_ptr, o_ptr, t_ptr, dim,
                NEED_DX: tl.constexpr, FOLD_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Fold a chunk's row sums (relative to new_max) into the running accumulators (relative to
    old_max until now); O first gets the previous chunk's product t (FOLD_T), then the rescale."""
    rescale = tl.exp2(old_max - new_max)
    tl.store(run_max_ptr + rows, new_max, mask=row_ok)
    tl.store(run_sum_ptr + rows, tl.load(run_sum_ptr + rows, mask=row_ok, other=0.0) * rescale + chunk_sum,
             mask=row_ok)
    tl.store(tcos_ptr + rows, tl.load(tcos_ptr + rows, mask=row_ok, other=0.0) + chunk_tcos, mask=row_ok)
    if NEED_DX:
        tl.store(off_sum_ptr + rows,
                 tl.load(off_sum_ptr + rows, mask=row_ok, other=0.0) * rescale + chunk_off_sum, mask=row_ok)
        for d0 in range(0, dim, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            at = rows[:, None] * dim + ds[None, :]
            ok = row_ok[:, None] & (ds[None, :] < dim)
            o = tl.load(o_ptr + at, mask=ok, other=0.0)
            if FOLD_T:
                o += tl.load(t_ptr + at, mask=ok, other=0.0)
            tl.store(o_ptr + at, o * rescale[:, None], mask=ok)


@triton.jit
def _max_of_pieces(part_max_ptr, rows, row_ok, n_rows, n_pieces, BLOCK_R: tl.constexpr):
    """The chunk's row maxima from its pieces' (the same value in every kernel that asks)."""
    chunk_max = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for k in range(0, n_pieces):
        chunk_max = tl.maximum(chunk_max, tl.load(part_max_ptr + k * n_rows + rows, mask=row_ok, other=0.0))
    return chunk_max


@triton.jit
def _program_rows_and_piece(n_rows, chunk_cols, piece_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's rows (with their mask) and its piece of the chunk's columns:
    (rows, row_ok, piece, col_begin, n_cols). The row loads stay in the kernels: with the labels
    loaded here, torch.compile's mutation analysis of user kernels took labels_ptr for a written
    argument and copied it at each call (the compile trace test checks this)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    piece = tl.program_id(1)
    # piece_cols is a multiple of BLOCK_C (the caller's rule), so tiles never cross pieces and only
    # the chunk's end masks columns; loops count offsets from 0 and masks compare with chunk_cols,
    # whose divisibility is known: the loads stay vectorised.
    col_begin = tl.multiple_of(piece * piece_cols, BLOCK_C)
    n_cols = tl.minimum(piece_cols, chunk_cols - col_begin)
    return rows, row_ok, piece, col_begin, n_cols


# chunk_cols (softmax) and n_rows (logit gradients) are row strides of the chunk buffers: specialised,
# so that their divisibility by 16 gives vectorised loads and stores; c0 and the bounds are not.
@triton.jit(do_not_specialize=["n_rows", "piece_cols", "c0"])
def chunk_piece_max_kernel(dots_ptr, labels_ptr, x_norm_ptr, w_norm_ptr, part_max_ptr, part_tcos_ptr,
                           n_rows, chunk_cols, piece_cols, c0, scale_log2, margin_log2,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Split chunks (few rows: the columns are cut into pieces so that the grid fills the GPU), first
    pass: per (piece, row) the maximum of z and the target cosine over the piece's columns."""
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale_log2 = tl.cast(scale_log2, tl.float32)
    margin_log2 = tl.cast(margin_log2, tl.float32)
    rows, row_ok, piece, col_begin, n_cols = _program_rows_and_piece(n_rows, chunk_cols, piece_cols, BLOCK_R,
                                                                     BLOCK_C)
    local_labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1) - c0
    inv_x_norm = 1.0 / tl.maximum(tl.load(x_norm_ptr + rows, mask=row_ok, other=1.0), NORM_EPS)
    piece_max, target_cos = _piece_max(dots_ptr, w_norm_ptr, rows, row_ok, inv_x_norm, local_labels, col_begin,
                                       n_cols, chunk_cols, scale_log2, margin_log2, BLOCK_R, BLOCK_C)
    at = piece.to(tl.int64) * n_rows + rows
    tl.store(part_max_ptr + at, piece_max, mask=row_ok)
    tl.store(part_tcos_ptr + at, target_cos, mask=row_ok)


@triton.jit(do_not_specialize=["n_rows", "piece_cols", "n_pieces", "c0"])
def chunk_softmax_kernel(dots_ptr, p_ptr, labels_ptr, x_norm_ptr, w_norm_ptr,
                         run_max_ptr, run_sum_ptr, tcos_ptr, off_sum_ptr, o_ptr, t_ptr,
                         part_max_ptr, part_sum_ptr, part_off_sum_ptr,
                         n_rows, chunk_cols, piece_cols, n_pieces, c0, dim, scale_log2, margin_log2,
                         NEED_DX: tl.constexpr, FOLD_T: tl.constexpr, SPLIT: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """One chunk of classes [c0, c0 + chunk_cols): probabilities and row sums.

    dots_ptr: (n_rows, chunk_cols) fp32 x_i . w_j, contiguous; w_norm_ptr points at the chunk's first
    norm. Writes P[i, j] = p_ij / ||w_j|| (0 on the target), relative to the new running max
    max(run_max, chunk max) (log2 units), in p_ptr's dtype, for the caller's GEMM P W_chunk.
    Unsplit (one program per row block, all columns): finds the chunk max itself (a first pass) and
    folds the row sums into the running accumulators: run_max, run_sum, tcos (the target cosine,
    when the target is in the chunk) and, when NEED_DX, the off-target sums over j != y_i, off_sum
    and O (n_rows x dim, fp32), into which the previous chunk's product t = P_prev W_prev
    goes first (FOLD_T). SPLIT (a program per row block and piece of piece_cols columns): takes the
    chunk max from chunk_piece_max_kernel's pieces and writes its piece's row sums for
    chunk_merge_kernel, which folds them.
    """
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale_log2 = tl.cast(scale_log2, tl.float32)
    margin_log2 = tl.cast(margin_log2, tl.float32)
    rows, row_ok, piece, col_begin, n_cols = _program_rows_and_piece(n_rows, chunk_cols, piece_cols, BLOCK_R,
                                                                     BLOCK_C)
    local_labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1) - c0
    inv_x_norm = 1.0 / tl.maximum(tl.load(x_norm_ptr + rows, mask=row_ok, other=1.0), NORM_EPS)
    old_max = tl.load(run_max_ptr + rows, mask=row_ok, other=0.0)
    if SPLIT:
        chunk_max = _max_of_pieces(part_max_ptr, rows, row_ok, n_rows, n_pieces, BLOCK_R)
        target_cos = tl.zeros([BLOCK_R], dtype=tl.float32)
    else:
        chunk_max, target_cos = _piece_max(dots_ptr, w_norm_ptr, rows, row_ok, inv_x_norm, local_labels, 0,
                                           chunk_cols, chunk_cols, scale_log2, margin_log2, BLOCK_R, BLOCK_C)
    new_max = tl.maximum(old_max, chunk_max)

    chunk_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    off_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    for offset in range(0, n_cols, BLOCK_C):
        cols = col_begin + offset + tl.arange(0, BLOCK_C)
        cos, z, is_target, inv_w_norm, col_ok = _chunk_cosines(dots_ptr, w_norm_ptr, rows, row_ok, inv_x_norm,
                                                               local_labels, cols, chunk_cols, scale_log2,
                                                               margin_log2)
        p = tl.exp2(z - new_max[:, None])
        chunk_sum += tl.sum(p, axis=1)
        if NEED_DX:
            p_off, tile_off_sum = off_target_terms(p, is_target)
            off_sum += tile_off_sum
            tl.store(p_ptr + rows[:, None] * chunk_cols + cols[None, :],
                     (p_off * inv_w_norm[None, :]).to(p_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & col_ok[None, :])

    if SPLIT:
        at = piece.to(tl.int64) * n_rows + rows
        tl.store(part_sum_ptr + at, chunk_sum, mask=row_ok)
        if NEED_DX:
            tl.store(part_off_sum_ptr + at, off_sum, mask=row_ok)
    else:
        _fold_chunk(rows, row_ok, old_max, new_max, chunk_sum, target_cos, off_sum,
                    run_max_ptr, run_sum_ptr, tcos_ptr, off_sum_ptr, o_ptr, t_ptr, dim,
                    NEED_DX, FOLD_T, BLOCK_D)


@triton.jit
def chunk_merge_kernel(part_max_ptr, part_tcos_ptr, part_sum_ptr, part_off_sum_ptr,
                       run_max_ptr, run_sum_ptr, tcos_ptr, off_sum_ptr, o_ptr, t_ptr,
                       n_rows, n_pieces, dim, NEED_DX: tl.constexpr, FOLD_T: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Split chunks, last step: the pieces' row sums, added in piece order (deterministic), folded
    into the running accumulators as the unsplit softmax kernel does."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    old_max = tl.load(run_max_ptr + rows, mask=row_ok, other=0.0)
    new_max = tl.maximum(old_max, _max_of_pieces(part_max_ptr, rows, row_ok, n_rows, n_pieces, BLOCK_R))
    chunk_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    chunk_tcos = tl.zeros([BLOCK_R], dtype=tl.float32)
    off_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k in range(0, n_pieces):
        at = k * n_rows + rows
        chunk_sum += tl.load(part_sum_ptr + at, mask=row_ok, other=0.0)
        chunk_tcos += tl.load(part_tcos_ptr + at, mask=row_ok, other=0.0)
        if NEED_DX:
            off_sum += tl.load(part_off_sum_ptr + at, mask=row_ok, other=0.0)
    _fold_chunk(rows, row_ok, old_max, new_max, chunk_sum, chunk_tcos, off_sum,
                run_max_ptr, run_sum_ptr, tcos_ptr, off_sum_ptr, o_ptr, t_ptr, dim,
                NEED_DX, FOLD_T, BLOCK_D)


@triton.jit
def chunk_finish_kernel(run_max_ptr, run_sum_ptr, tcos_ptr, off_sum_ptr, o_ptr, t_ptr,
                        row_am_ptr, lse_ptr, off_mass_ptr, n_rows, dim, scale, margin_scaled,
                        NEED_DX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """After the last chunk: lse_i, row_am_i = lse_i - s (cos_iy - m) and, when NEED_DX, the
    normalised off-target sums: off_mass = 1 - p_iy (new buffer) and O (in place, the last chunk's
    product t folded in)."""
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale = tl.cast(scale, tl.float32)
    margin_scaled = tl.cast(margin_scaled, tl.float32)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    total = tl.load(run_sum_ptr + rows, mask=row_ok, other=1.0)
    lse = (tl.load(run_max_ptr + rows, mask=row_ok, other=0.0) + tl.log2(total)) * LN2
    target_cos = tl.load(tcos_ptr + rows, mask=row_ok, other=0.0)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(row_am_ptr + rows, lse - (target_cos * scale - margin_scaled), mask=row_ok)
    if NEED_DX:
        tl.store(off_mass_ptr + rows, tl.load(off_sum_ptr + rows, mask=row_ok, other=0.0) / total, mask=row_ok)
        for d0 in range(0, dim, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            at = rows[:, None] * dim + ds[None, :]
            ok = row_ok[:, None] & (ds[None, :] < dim)
            o = tl.load(o_ptr + at, mask=ok, other=0.0) + tl.load(t_ptr + at, mask=ok, other=0.0)
            tl.store(o_ptr + at, o / total[:, None], mask=ok)


@triton.jit
def logit_grads_over_x_norm(cos, is_target, lse_log2, a_s, b, inv_x_norm, scale_log2, margin_log2):
    """g_ij / ||x_i|| on a tile of cosines, with g_ij = a_i s (p_ij - [j == y_i]) + b_i [j == y_i] and p
    recomputed from the saved lse (log2 units); a_s = a_i s and b_i are the per-row gradients of the
    row terms. The per-row operands come already shaped for the tile's layout ([:, None] when rows
    run down the tile, [None, :] when across)."""
    p = tl.exp2(margin_logits(cos, is_target, scale_log2, margin_log2) - lse_log2)
    g = a_s * (p - tl.where(is_target, 1.0, 0.0)) + tl.where(is_target, b, 0.0)
    return g * inv_x_norm


@triton.jit(do_not_specialize=["chunk_cols", "c0"])
def chunk_grad_logits_kernel(dots_t_ptr, g_t_ptr, labels_ptr, x_norm_ptr, w_norm_ptr, lse_ptr, grad_am_ptr,
                             grad_cos_ptr, n_rows, chunk_cols, c0, scale, scale_log2, margin_log2,
                             BLOCK_J: tl.constexpr, BLOCK_I: tl.constexpr):
    """G^T[j, i] = g_ij / ||x_i|| for one chunk of classes (dL/dW), in g_t_ptr's dtype, from
    dots_t (chunk_cols, n_rows) fp32 = w_j . x_i (logit_grads_over_x_norm); then
    G^T x = sum_i g_ij x^_i, the gradient w.r.t. the normalised centroids of the chunk. One program:
    a BLOCK_J x BLOCK_I tile (classes x rows). Classes x rows (the transpose of the forward's chunk)
    keeps torch.compile from merging this GEMM with the forward's and saving the N x chunk dot
    products for the backward; it is also the layout the G^T x GEMM reads."""
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale = tl.cast(scale, tl.float32)
    scale_log2 = tl.cast(scale_log2, tl.float32)
    margin_log2 = tl.cast(margin_log2, tl.float32)
    cols = tl.program_id(0).to(tl.int64) * BLOCK_J + tl.arange(0, BLOCK_J)
    col_ok = cols < chunk_cols
    rows = tl.program_id(1).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    row_ok = rows < n_rows
    inv_w_norm = 1.0 / tl.maximum(tl.load(w_norm_ptr + cols, mask=col_ok, other=1.0), NORM_EPS)
    local_labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1) - c0
    inv_x_norm = 1.0 / tl.maximum(tl.load(x_norm_ptr + rows, mask=row_ok, other=1.0), NORM_EPS)
    lse_log2 = tl.load(lse_ptr + rows, mask=row_ok, other=0.0) * LOG2E
    a_s = tl.load(grad_am_ptr + rows, mask=row_ok, other=0.0) * scale
    b = tl.load(grad_cos_ptr + rows, mask=row_ok, other=0.0)
    at = cols[:, None] * n_rows + rows[None, :]
    ok = col_ok[:, None] & row_ok[None, :]
    cos = tl.load(dots_t_ptr + at, mask=ok, other=0.0) * inv_w_norm[:, None] * inv_x_norm[None, :]
    is_target = cols[:, None] == local_labels[None, :]
    g = logit_grads_over_x_norm(cos, is_target, lse_log2[None, :], a_s[None, :], b[None, :], inv_x_norm[None, :],
                                scale_log2, margin_log2)
    tl.store(g_t_ptr + at, g.to(g_t_ptr.dtype.element_ty), mask=ok)
