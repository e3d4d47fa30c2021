"""The 'epilogue' strategy of the Triton PEDCC-Loss: per chunk of classes, a Triton GEMM x W_k^T whose
epilogue turns the dot products into probabilities in registers, then a library GEMM P_k W_k (custom
op "pedcc_triton::row_loss_epilogue").

Why a third strategy: the 'gemm' strategy (gemm_loss.py) moves each logit through memory four times
(the fp32 dot product written by cuBLAS and read back by the softmax kernel, the probability written
and read by the second GEMM: 12 bytes a logit in bf16), which at N = 4096, C = 100000 is about 5 GB,
some 1.5 ms of an H100's bandwidth. Here the dot products stay in registers: 4 bytes a logit in bf16
(P written and read once). A row max cannot be known inside one tile, so each row gets a fixed
reference before the sweep (fixed_reference.py); where that is not safe for every input
(fp16 operands, or a logit range s (2 + |m|) too wide for fp32, e.g. s = 64 with m = 0.35), and
beyond MAX_ROWS rows, the 'gemm' strategy runs instead (applies()). Forward + dL/dx is 4 N C d FLOP.
Memory: one chunk of N x chunk probabilities (CHUNK_BYTES, as 'gemm') and the tiles' row sums, plus
O(N d); never N x C. dL/dW (when the centroids require it) runs the same way: an epilogue GEMM x W_k^T
writes the logit gradients G_k^T (p from the saved lse), then a library GEMM G_k^T x.

The op returns exactly what pedcc_triton::row_loss returns, so dL/dx reuses its O(N d) kernel.
Unmeasured on a GPU so far: benchmarks/bench_loss.py times it as 'triton_epilogue'.
"""
import functools
from typing import Tuple

import torch
import triton
from torch.library import triton_op, wrap_triton

from .fused_loss import (LOG2E, _row_norms, _rowwise_grid, _tile_addressable, _upcast, backward_with,
                         save_for_backward)
from .fused_loss_config import (AUTOTUNE, INTERPRET, ROWWISE_BLOCK_D, ROWWISE_BLOCK_ROWS, ROWWISE_WARPS,
                                dot_precision, fp32_operands, size_key)
from .epilogue_loss_kernels import fold_tiles_kernel, grad_logits_epilogue_kernel, logits_epilogue_kernel
from .fixed_reference import reference_is_safe, row_references
from .fused_loss_bwd import grad_centroids_finish_kernel
from .gemm_loss import chunk_classes, finish_rows, gemm_fp32_out, grad_chunk_classes


def applies(s: float, m: float, n_rows: int, n_classes: int, operand: torch.dtype) -> bool:
    """Whether the epilogue op takes this call: a safe reference and at most MAX_ROWS rows."""
    return n_rows <= MAX_ROWS and reference_is_safe(s, m, n_classes, operand)


# Autotune candidates (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). Half precision: the usual Hopper GEMM
# tiles (a warp group's wgmma covers 64 rows); the epilogue adds an exp2 a logit and a row sum beside the
# fp32 accumulator. ptxas (sm_90a, bf16, forward with NEED_DX / dL/dW): no spills; registers 173 / 220
# (128 x 128, 8 warps: one program an SM), 126 / 170 and 123 / 153 (64 x 128 and 128 x 64, 4 warps: two
# an SM by shared memory), 72 / 112 (64 x 64: small C still fills the GPU), 244 / 254 (128 x 256), 205
# (128 x 128 in K steps of 128: d = 512 in 4 steps instead of 8). fp32 operands (3xTF32 at torch's
# 'highest') take three tensor-core passes and twice the shared memory a K chunk, so K chunks of 32
# (126-184 registers, no spills).
# Unmeasured: the autotuner decides on the GPU (the first candidate alone with PEDCC_TRITON_AUTOTUNE=0).
HALF_CANDIDATES = [(128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (64, 64, 64, 4, 4),
                   (128, 256, 64, 8, 3), (128, 128, 128, 8, 2)]
FP32_CANDIDATES = [(64, 64, 32, 4, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3)]
# Under the interpreter, tiles of 8 x 8 with K chunks of 16: the tiny test shapes (chunks of 16
# classes, gemm_loss.INTERPRET_CHUNK) cover several tiles, partial ones and a K loop.
INTERPRET_CANDIDATE = (8, 8, 16, 4, 1)


def candidates(fp32: bool) -> list:
    """The epilogue GEMM's (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) for this operand width."""
    if INTERPRET:
        return [INTERPRET_CANDIDATE]
    chosen = FP32_CANDIDATES if fp32 else HALF_CANDIDATES
    return chosen if AUTOTUNE else chosen[:1]


# The narrowest BLOCK_N of any candidate sizes the tiles' row-sum buffers; the widest tile bounds the
# int32 offsets inside a tile (x and W rows, P and G^T rows of a chunk); the narrowest tile and CUDA's
# 65535 programs on a grid's second axis (the row blocks) bound the batch.
MIN_BLOCK_N = min(c[1] for c in candidates(False) + candidates(True))
MAX_TILE_ROWS = max(max(c[0], c[1]) for c in candidates(False) + candidates(True))
MAX_CHUNK = 2**31 // MAX_TILE_ROWS
MAX_ROWS = min(MAX_CHUNK, 65535 * min(min(c[0], c[1]) for c in candidates(False) + candidates(True)))
# Tiles' row sums the fold adds per load. Its loop of plain loads is latency-bound (no pipelining), and
# a small batch has few row blocks: at N = 128, C = 100000 (1563 slots) loads of 32 slots would chain 49
# round trips (~50 us, as long as the GEMM work); 256 slots (16 KB a load) make it 7. Under the
# interpreter one slot a load, so the tiny tests loop.
FOLD_BLOCK_TILES = 1 if INTERPRET else 256


def _configs(fp32: bool) -> list:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in candidates(fp32)]


@functools.lru_cache(maxsize=None)
def epilogue_kernel(fp32: bool):
    """The forward's epilogue GEMM autotuned over the candidates for this operand width."""
    return logits_epilogue_kernel(_configs(fp32))


@functools.lru_cache(maxsize=None)
def grad_epilogue_kernel(fp32: bool):
    """The dL/dW epilogue GEMM (tiles of rows x classes, stored transposed) over the same candidates."""
    return grad_logits_epilogue_kernel(_configs(fp32))


@triton_op("pedcc_triton::row_loss_epilogue", mutates_args=())
def row_loss_epilogue(features: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, s: float, m: float,
                      need_dx: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor, torch.Tensor, torch.Tensor]:
    """pedcc_triton::row_loss computed by epilogue GEMMs over chunks of classes (same inputs, same
    outputs: row_am, target_cos, lse, x_norm, w_norm, off_o, off_mass, fp32).

    features (N, d) and centroids (C, d) bf16/fp32 (promoted together: fp32 if either is), any
    strides; labels (N,) int64 in [0, C). Call only where applies(s, m, N, C, promoted dtype).
    """
    features, centroids = _tile_addressable(features, MAX_TILE_ROWS), _tile_addressable(centroids, MAX_TILE_ROWS)
    n_rows, dim = features.shape
    n_classes = centroids.shape[0]
    device = features.device
    f32 = dict(dtype=torch.float32, device=device)
    operand = torch.promote_types(features.dtype, centroids.dtype)
    x_norm = _row_norms(features)
    w_norm = _row_norms(centroids)

    # run_sum starts with the target's own term; the epilogue sums the others.
    target_cos, ref, run_sum = row_references(features, centroids, labels, x_norm, w_norm, s, m)

    off_sum = torch.zeros(n_rows if need_dx else 0, **f32)
    off_o = torch.zeros(n_rows if need_dx else 0, dim, **f32)
    kernel = epilogue_kernel(fp32_operands(features.dtype, centroids.dtype))
    upcast, precision = _upcast(features, centroids), dot_precision(features.dtype, centroids.dtype)
    # The probabilities are the only per-logit buffer: a chunk of them fills the budget 'gemm' splits
    # between them and its fp32 dot products.
    chunk = min(chunk_classes(n_rows, n_classes, operand.itemsize, dot_bytes=0), MAX_CHUNK)
    product = None
    for c0 in range(0, n_classes, chunk):
        w = centroids[c0:c0 + chunk]
        width = w.shape[0]
        probs = torch.empty((n_rows, width) if need_dx else (0, 0), dtype=operand, device=device)

        def grid(meta):
            return (triton.cdiv(width, meta["BLOCK_N"]), triton.cdiv(n_rows, meta["BLOCK_M"]))

        # One row-sum slot per tile column of the narrowest candidate (the autotuner's choice is not
        # known here); slots past the chosen tiles' stay 0 for the fold.
        max_tiles = triton.cdiv(width, MIN_BLOCK_N)
        part_sum = torch.zeros(max_tiles, n_rows, **f32)
        wrap_triton(kernel)[grid](
            features, w, labels, x_norm, w_norm[c0:], ref, probs, part_sum, n_rows, width, c0, dim,
            features.stride(0), features.stride(1), w.stride(0), w.stride(1), s * LOG2E, size_key(n_rows),
            NEED_DX=need_dx, UPCAST=upcast, PRECISION=precision)
        wrap_triton(fold_tiles_kernel)[_rowwise_grid(n_rows)](
            part_sum, max_tiles, run_sum, off_sum, off_o,
            off_o if product is None else product, n_rows, dim, NEED_DX=need_dx, FOLD_T=product is not None,
            BLOCK_R=ROWWISE_BLOCK_ROWS, BLOCK_T=FOLD_BLOCK_TILES, BLOCK_D=ROWWISE_BLOCK_D, num_warps=ROWWISE_WARPS)
        if need_dx:
            product = gemm_fp32_out(probs, w.to(operand))
        del probs  # the next chunk's buffer reuses the memory: the chunk budget holds in eager mode

    # The 'gemm' finish with the reference as the (never rescaled) running max.
    row_am, lse, off_mass = finish_rows(ref, run_sum, target_cos, off_sum, off_o, product, s, m, need_dx)
    return row_am, target_cos, lse, x_norm, w_norm, off_o, off_mass


@triton_op("pedcc_triton::row_loss_epilogue_grad_centroids", mutates_args=())
def row_loss_epilogue_grad_centroids(grad_am: torch.Tensor, grad_cos: torch.Tensor, features: torch.Tensor,
                                     centroids: torch.Tensor, labels: torch.Tensor, x_norm: torch.Tensor,
                                     w_norm: torch.Tensor, lse: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """dL/dcentroids (C, d) in centroids' dtype, chunk by chunk: an epilogue GEMM x W_k^T that writes the
    logit gradients G_k^T (p from the saved lse), the GEMM G_k^T x, then the chain through the
    normalisation of w (fp32 until the final store). N <= MAX_ROWS, as for the forward (int32 offsets in
    a G^T tile, row tiles on the grid's second axis)."""
    features, centroids = _tile_addressable(features, MAX_TILE_ROWS), _tile_addressable(centroids, MAX_TILE_ROWS)
    n_rows, dim = features.shape
    n_classes = centroids.shape[0]
    operand = torch.promote_types(features.dtype, centroids.dtype)
    x = features.to(operand)
    kernel = grad_epilogue_kernel(fp32_operands(features.dtype, centroids.dtype))
    upcast, precision = _upcast(features, centroids), dot_precision(features.dtype, centroids.dtype)
    grad_w = torch.empty(n_classes, dim, dtype=centroids.dtype, device=features.device)
    chunk = min(grad_chunk_classes(n_rows, n_classes, dim, operand.itemsize, dot_bytes=0), MAX_CHUNK)
    for c0 in range(0, n_classes, chunk):
        w = centroids[c0:c0 + chunk]
        width = w.shape[0]
        logit_grads_t = torch.empty(width, n_rows, dtype=operand, device=features.device)

        def grid(meta):
            return (triton.cdiv(width, meta["BLOCK_N"]), triton.cdiv(n_rows, meta["BLOCK_M"]))

        wrap_triton(kernel)[grid](
            features, w, labels, x_norm, w_norm[c0:], lse, grad_am, grad_cos, logit_grads_t, n_rows, width, c0, dim,
            features.stride(0), features.stride(1), w.stride(0), w.stride(1), s, s * LOG2E, s * m * LOG2E,
            size_key(n_rows), UPCAST=upcast, PRECISION=precision)
        grad_w_hat = gemm_fp32_out(logit_grads_t, x)
        del logit_grads_t  # the next chunk's buffer reuses the memory: the chunk budget holds in eager mode
        wrap_triton(grad_centroids_finish_kernel)[_rowwise_grid(width)](
            grad_w_hat, w, w_norm[c0:], grad_w, width, dim, 1, w.stride(0), w.stride(1), c0,
            BLOCK_R=ROWWISE_BLOCK_ROWS, BLOCK_D=ROWWISE_BLOCK_D, num_warps=ROWWISE_WARPS)
    return grad_w


row_loss_epilogue.register_autograd(
    backward_with("pedcc_triton::row_loss_epilogue", row_loss_epilogue_grad_centroids),
    setup_context=save_for_backward)
