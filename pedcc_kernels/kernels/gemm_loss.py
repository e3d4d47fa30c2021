"""The 'gemm' strategy of the Triton PEDCC-Loss: library GEMMs over chunks of classes, Triton for the
softmax work between them (custom ops "pedcc_triton::row_loss_gemm" and its dL/dW).

Why a second strategy: at d = 512 the single-sweep kernel (fused_loss_fwd.py) keeps an accumulator as
wide as d beside the cosine tile, which forces small tiles or recomputed cosines; on the H200 it ran
at 60-88 TFLOP/s in bf16 (benchmarks/results/loss-nvidia-h200-2026-11-28.json). Here each chunk of
classes costs two plain GEMMs (x W_k^T, then P_k W_k, as the unfused ops do, but with the
probabilities written once, in the operand dtype) and one memory-bound Triton kernel; the online
softmax runs across chunks (FlashAttention's rescaling, at chunk granularity), so forward + dL/dx is
still 4 N C d FLOP. Memory: one chunk of N x chunk fp32 dot products and N x chunk probabilities,
bounded by CHUNK_BYTES, plus O(N d) rows; never N x C.

The op returns exactly what pedcc_triton::row_loss returns, so dL/dx reuses its O(N d) kernel.
"""
import os
from typing import Tuple

import torch
import triton
from torch.library import triton_op, wrap_triton

from .fused_loss import LOG2E, _row_norms, _rowwise_grid, backward_with, save_for_backward
from .fused_loss_bwd import grad_centroids_finish_kernel
from .fused_loss_config import INTERPRET, ROWWISE_BLOCK_D, ROWWISE_BLOCK_ROWS, ROWWISE_WARPS, multiprocessors
from .gemm_loss_kernels import (chunk_finish_kernel, chunk_grad_logits_kernel, chunk_merge_kernel,
                                chunk_piece_max_kernel, chunk_softmax_kernel)

# Bytes of the per-chunk buffers (fp32 dot products + probabilities in the operand dtype). Each chunk
# costs about 35 us of host time (two torch.mm, one Triton launch, views): a chunk of 64 MiB holds
# 10752 bf16 classes at N = 1024 and 2560 at N = 4096, whose GPU work at d = 512 (two GEMMs of 11 or
# 5.4 GFLOP and one pass over the chunk) should outlast that. Under 3% of the unfused reference's
# extra memory at C = 100000 (2442 / 9474 MiB on the H200). Unmeasured; the GPU benchmark decides.
# PEDCC_GEMM_CHUNK_MIB overrides it (read at each call: less memory, or a benchmark's sweep).
CHUNK_BYTES = 64 * 2**20
CHUNK_ALIGN = 256
# Under the interpreter: chunks of 16 classes in tiles of 8, so tiny test shapes span several chunks
# and a chunk several tiles, with a partial last one.
INTERPRET_CHUNK = 16
# The softmax kernel is a memory-bound loop of plain loads (no software pipelining): what hides the
# latency is bytes in flight, 8 KB a tile times the programs resident on an SM. Tiles of 2 x 1024 at
# 4 warps take 72 registers, no spills, vectorised loads (ptxas sm_90a), so several programs fit an
# SM, and N = 1024 rows still give 512 programs (3.9 per SM of an H100). The logit-gradient kernel is
# elementwise: one 32 x 128 tile (classes x rows) a program at 8 warps (80 registers), whose per-row
# inputs (24 bytes a row) are small beside the tile (24 bytes a row and class). Under the
# interpreter, smaller tiles keep tiny test shapes over several tiles.
CHUNK_BLOCK_ROWS = 4 if INTERPRET else 2
CHUNK_BLOCK_COLS = 8 if INTERPRET else 1024
CHUNK_WARPS = 4
GRAD_BLOCK_CLASSES = 4 if INTERPRET else 32
GRAD_BLOCK_ROWS = 8 if INTERPRET else 128
GRAD_WARPS = 8
# Few rows (N / CHUNK_BLOCK_ROWS programs short of PROGRAMS_PER_SM a multiprocessor) split each chunk's
# columns into pieces of about MIN_PIECE_COLS or more (whole tiles), one program per row block and
# piece: a pass for the pieces' maxima, the softmax pass, and a merge of the pieces' row sums (two
# launches more, so not for the batches that nearly fill the GPU: N >= 528 on an H100 is unsplit).
PROGRAMS_PER_SM = 2
MIN_PIECE_COLS = 8 if INTERPRET else 4096


def chunk_bytes() -> int:
    """The chunk budget: PEDCC_GEMM_CHUNK_MIB (a positive number of MiB) when set, else CHUNK_BYTES."""
    setting = os.environ.get("PEDCC_GEMM_CHUNK_MIB")
    if setting is None:
        return CHUNK_BYTES
    try:
        mib = float(setting)
    except ValueError:
        mib = float("nan")
    if not mib > 0 or mib == float("inf"):
        raise ValueError(f"PEDCC_GEMM_CHUNK_MIB must be a positive number of MiB, got {setting!r}")
    return int(mib * 2**20)


def chunk_classes(n_rows: int, n_classes: int, operand_bytes: int, dot_bytes: int = 4) -> int:
    """Classes per chunk: as many as fit chunk_bytes() at this batch size, in multiples of CHUNK_ALIGN
    (at least one multiple), for a chunk that costs dot_bytes (the fp32 dot products; 0 where they
    stay in registers) plus operand_bytes (the probabilities) per row and class."""
    if INTERPRET:
        return min(INTERPRET_CHUNK, n_classes)
    per_class = max(1, n_rows) * (dot_bytes + operand_bytes)
    return min(n_classes, max(CHUNK_ALIGN, chunk_bytes() // per_class // CHUNK_ALIGN * CHUNK_ALIGN))


def grad_chunk_classes(n_rows: int, n_classes: int, dim: int, operand_bytes: int, dot_bytes: int = 4) -> int:
    """Classes per chunk of a dL/dW pass: chunk_classes, and no more than the chunk_bytes() budget holds
    of the chunk's fp32 gradient rows (chunk x d, the G^T x product)."""
    chunk = chunk_classes(n_rows, n_classes, operand_bytes, dot_bytes)
    if INTERPRET:
        return chunk
    return min(chunk, max(CHUNK_ALIGN, chunk_bytes() // (4 * max(1, dim)) // CHUNK_ALIGN * CHUNK_ALIGN))


def _mm_has_out_dtype() -> bool:
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 8)


MM_OUT_DTYPE = _mm_has_out_dtype()


def gemm_fp32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b accumulated and returned in fp32. Half operands stay half on CUDA (tensor cores, fp32
    output); fp32 operands follow torch.set_float32_matmul_precision, as the reference's GEMMs do.
    On CPU (interpreter tests) and before torch 2.8, half operands are upcast, which is exact.
    Autocast is off here: it would run the fp32 GEMMs in half precision and return half results."""
    with torch.autocast(a.device.type, enabled=False):
        if a.dtype == torch.float32 or a.device.type != "cuda" or not MM_OUT_DTYPE:
            return torch.mm(a.float(), b.float())
        return torch.mm(a, b, out_dtype=torch.float32)


def chunk_pieces(n_rows: int, chunk_cols: int, device: torch.device) -> Tuple[int, int]:
    """(columns per piece, pieces) of a chunk: one piece unless the row blocks alone leave the GPU
    short of programs (under the interpreter, short of 4)."""
    wanted = 4 if INTERPRET or device.type != "cuda" else PROGRAMS_PER_SM * multiprocessors(device)
    pieces = max(1, min(triton.cdiv(wanted, triton.cdiv(n_rows, CHUNK_BLOCK_ROWS)),
                        triton.cdiv(chunk_cols, MIN_PIECE_COLS)))
    piece_cols = triton.cdiv(triton.cdiv(chunk_cols, pieces), CHUNK_BLOCK_COLS) * CHUNK_BLOCK_COLS
    return piece_cols, triton.cdiv(chunk_cols, piece_cols)


def _softmax_over_chunk(dots, probs, row_inputs, state, c0, s, m, need_dx, fold_product):
    """Launch the Triton work on one chunk's dot products (n_rows, width): probabilities into probs,
    row sums folded into the running state (run_max, run_sum, target_cos, off_sum, off_o, previous
    product), split over column pieces when the rows alone leave the GPU short."""
    n_rows, width = dots.shape
    dim = state[4].shape[1]
    f32 = dict(dtype=torch.float32, device=dots.device)
    piece_cols, n_pieces = chunk_pieces(n_rows, width, dots.device)
    split = n_pieces > 1
    row_blocks = triton.cdiv(n_rows, CHUNK_BLOCK_ROWS)
    scalars = (s * LOG2E, s * m * LOG2E)
    # per (piece, row): max, target cosine, sum, off-target sum (separate tensors: under torch.compile,
    # kernels writing views of one buffer would copy it back each time)
    parts = [torch.empty(n_pieces if split else 0, n_rows, **f32) for _ in range(4)]
    if split:
        wrap_triton(chunk_piece_max_kernel)[(row_blocks, n_pieces)](
            dots, *row_inputs, parts[0], parts[1], n_rows, width, piece_cols, c0, *scalars,
            BLOCK_R=CHUNK_BLOCK_ROWS, BLOCK_C=CHUNK_BLOCK_COLS, num_warps=CHUNK_WARPS)
    part_args = (parts[0], parts[2], parts[3])  # empty and unread unless split
    wrap_triton(chunk_softmax_kernel)[(row_blocks, n_pieces)](
        dots, probs, *row_inputs, *state, *part_args, n_rows, width, piece_cols, n_pieces, c0, dim, *scalars,
        NEED_DX=need_dx, FOLD_T=fold_product and not split, SPLIT=split, BLOCK_R=CHUNK_BLOCK_ROWS,
        BLOCK_C=CHUNK_BLOCK_COLS, BLOCK_D=ROWWISE_BLOCK_D, num_warps=CHUNK_WARPS)
    if split:
        wrap_triton(chunk_merge_kernel)[_rowwise_grid(n_rows)](
            *parts, *state, n_rows, n_pieces, dim, NEED_DX=need_dx, FOLD_T=fold_product,
            BLOCK_R=ROWWISE_BLOCK_ROWS, BLOCK_D=ROWWISE_BLOCK_D, num_warps=ROWWISE_WARPS)


@triton_op("pedcc_triton::row_loss_gemm", mutates_args=())
def row_loss_gemm(features: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, s: float, m: float,
                  need_dx: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                          torch.Tensor, torch.Tensor]:
    """pedcc_triton::row_loss computed with library GEMMs over chunks of classes (same inputs, same
    outputs: row_am, target_cos, lse, x_norm, w_norm, off_o, off_mass, fp32).

    features (N, d) and centroids (C, d) fp16/bf16/fp32, any strides; the GEMMs run in the promoted
    dtype. labels (N,) int64 in [0, C).
    """
    n_rows, dim = features.shape
    n_classes = centroids.shape[0]
    device = features.device
    f32 = dict(dtype=torch.float32, device=device)
    operand = torch.promote_types(features.dtype, centroids.dtype)
    x = features.to(operand)
    x_norm = _row_norms(features)
    w_norm = _row_norms(centroids)

    run_max = torch.full((n_rows,), float("-inf"), **f32)
    run_sum = torch.zeros(n_rows, **f32)
    target_cos = torch.zeros(n_rows, **f32)
    off_sum = torch.zeros(n_rows if need_dx else 0, **f32)
    off_o = torch.zeros(n_rows if need_dx else 0, dim, **f32)
    chunk = chunk_classes(n_rows, n_classes, operand.itemsize)
    product = None
    for c0 in range(0, n_classes, chunk):
        w = centroids[c0:c0 + chunk].to(operand)
        dots = gemm_fp32_out(x, w.t())
        probs = torch.empty(dots.shape if need_dx else (0, 0), dtype=operand, device=device)
        state = (run_max, run_sum, target_cos, off_sum, off_o, off_o if product is None else product)
        _softmax_over_chunk(dots, probs, (labels, x_norm, w_norm[c0:]), state, c0, s, m, need_dx,
                            fold_product=product is not None)
        del dots  # the next chunk's buffers reuse the memory: the chunk budget holds in eager mode
        if need_dx:
            product = gemm_fp32_out(probs, w)
        del probs

    row_am, lse, off_mass = finish_rows(run_max, run_sum, target_cos, off_sum, off_o, product, s, m, need_dx)
    return row_am, target_cos, lse, x_norm, w_norm, off_o, off_mass


def finish_rows(run_max, run_sum, target_cos, off_sum, off_o, product, s, m, need_dx):
    """After the last chunk: (row_am, lse, off_mass) from the running row sums (relative to run_max,
    log2 units); off_o gets the last chunk's product (None when there was none) and the
    normalisation, in place."""
    n_rows, dim = target_cos.shape[0], off_o.shape[1]
    f32 = dict(dtype=torch.float32, device=target_cos.device)
    row_am = torch.empty(n_rows, **f32)
    lse = torch.empty(n_rows, **f32)
    off_mass = torch.empty(n_rows if need_dx else 0, **f32)
    wrap_triton(chunk_finish_kernel)[_rowwise_grid(n_rows)](
        run_max, run_sum, target_cos, off_sum, off_o, off_o if product is None else product,
        row_am, lse, off_mass, n_rows, dim, s, s * m,
        NEED_DX=need_dx, BLOCK_R=ROWWISE_BLOCK_ROWS, BLOCK_D=ROWWISE_BLOCK_D, num_warps=ROWWISE_WARPS)
    return row_am, lse, off_mass


@triton_op("pedcc_triton::row_loss_gemm_grad_centroids", mutates_args=())
def row_loss_gemm_grad_centroids(grad_am: torch.Tensor, grad_cos: torch.Tensor, features: torch.Tensor,
                                 centroids: torch.Tensor, labels: torch.Tensor, x_norm: torch.Tensor,
                                 w_norm: torch.Tensor, lse: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """dL/dcentroids (C, d) in centroids' dtype, chunk by chunk: the dot products again (GEMM), the
    gradient of the logits G (Triton, p from the saved lse), G^T x (GEMM), then the chain through
    the normalisation of w (fp32 until the final store)."""
    n_rows, dim = features.shape
    n_classes = centroids.shape[0]
    operand = torch.promote_types(features.dtype, centroids.dtype)
    x = features.to(operand)
    grad_w = torch.empty(n_classes, dim, dtype=centroids.dtype, device=features.device)
    chunk = grad_chunk_classes(n_rows, n_classes, dim, operand.itemsize)
    for c0 in range(0, n_classes, chunk):
        w_chunk = centroids[c0:c0 + chunk]
        width = w_chunk.shape[0]
        dots_t = gemm_fp32_out(w_chunk.to(operand), x.t())
        logit_grads_t = torch.empty(width, n_rows, dtype=operand, device=features.device)
        wrap_triton(chunk_grad_logits_kernel)[(triton.cdiv(width, GRAD_BLOCK_CLASSES),
                                               triton.cdiv(n_rows, GRAD_BLOCK_ROWS))](
            dots_t, logit_grads_t, labels, x_norm, w_norm[c0:], lse, grad_am, grad_cos, n_rows, width, c0,
            s, s * LOG2E, s * m * LOG2E, BLOCK_J=GRAD_BLOCK_CLASSES, BLOCK_I=GRAD_BLOCK_ROWS, num_warps=GRAD_WARPS)
        del dots_t  # the next chunk's buffers reuse the memory: the chunk budget holds in eager mode
        grad_w_hat = gemm_fp32_out(logit_grads_t, x)
        del logit_grads_t
        wrap_triton(grad_centroids_finish_kernel)[_rowwise_grid(width)](
            grad_w_hat, w_chunk, w_norm[c0:], grad_w, width, dim, 1, w_chunk.stride(0), w_chunk.stride(1), c0,
            BLOCK_R=ROWWISE_BLOCK_ROWS, BLOCK_D=ROWWISE_BLOCK_D, num_warps=ROWWISE_WARPS)
    return grad_w


row_loss_gemm.register_autograd(backward_with("pedcc_triton::row_loss_gemm", row_loss_gemm_grad_centroids),
                                setup_context=save_for_backward)
