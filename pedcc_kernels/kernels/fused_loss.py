"""The fused Triton PEDCC-Loss as torch custom ops (namespace "pedcc_triton"), with autograd.

`pedcc_triton::row_loss` returns per-row `row_am_i = logsumexp_j z_ij - z_{i,y_i}` and
`target_cos_i = cos_{i,y_i}` (plus the rows its backward needs); the reductions, ignore_index and the
MSE root are composed on those N-vectors by `reference.combine_rows`, exactly as the torch backend does,
so every option gets its gradient from torch autograd as per-row (a_i, b_i).

The ops are `torch.library.triton_op`s: eager calls launch the kernels directly, and torch.compile
sees the kernels themselves (no graph break, no host sync). The logits never exist: memory is
O(N*d) for the forward and dL/dx, plus O(C*d) partial sums only when the centroids require a gradient.
"""
from typing import Tuple

import torch
import triton
from torch.library import triton_op, wrap_triton

from ..reference import combine_rows, loss_dtype
from .fused_loss_bwd import (grad_centroids_finish_kernel, grad_centroids_sweep_keys,
                             grad_centroids_sweep_kernel, grad_features_kernel)
from .fused_loss_config import (INTERPRET, MAX_TILE_ROWS, NOMINAL_BLOCK, ROWWISE_BLOCK_D, ROWWISE_BLOCK_ROWS,
                                ROWWISE_WARPS, dot_precision, fp32_operands, loss_strategy, padded_dim,
                                split_evenly)
from .fused_loss_fwd import (combine_pieces_kernel, forward_sweep_keys, forward_sweep_kernel,
                             row_norm_kernel)
from .fixed_reference import reference_is_safe, row_references

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _rowwise_grid(n_rows):
    return (triton.cdiv(n_rows, ROWWISE_BLOCK_ROWS),)


def _row_norms(t: torch.Tensor) -> torch.Tensor:
    norms = torch.empty(t.shape[0], dtype=torch.float32, device=t.device)
    wrap_triton(row_norm_kernel)[_rowwise_grid(t.shape[0])](
        t, norms, t.shape[0], t.shape[1], t.stride(0), t.stride(1),
        BLOCK_R=ROWWISE_BLOCK_ROWS, BLOCK_D=ROWWISE_BLOCK_D, num_warps=ROWWISE_WARPS)
    return norms


def _tile_addressable(t: torch.Tensor, tile_rows: int = MAX_TILE_ROWS) -> torch.Tensor:
    """The sweeps address a tile of up to tile_rows rows with int32 offsets from an int64 base; a layout
    whose in-tile offsets could pass 2^31 (a transposed view of millions of rows, say) is copied to a
    contiguous one."""
    reach = tile_rows * t.stride(0) + padded_dim(t.shape[1]) * t.stride(1)
    return t if reach < 2**31 else t.contiguous()


def _upcast(features: torch.Tensor, centroids: torch.Tensor) -> bool:
    """GEMMs run in the promoted dtype: mixed half features and fp32 centroids upcast in-kernel.
    The interpreter multiplies bf16 tiles as raw integers, so it upcasts them too (fp16 it gets right)."""
    interpreted_bf16 = INTERPRET and torch.bfloat16 in (features.dtype, centroids.dtype)
    return interpreted_bf16 or features.dtype != centroids.dtype


@triton_op("pedcc_triton::row_loss", mutates_args=())
def row_loss(features: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, s: float, m: float,
             need_dx: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                     torch.Tensor, torch.Tensor]:
    """Per-row PEDCC terms in one sweep over the centroids, for logits z_ij = s (cos_ij - m [j == y_i]).

    features (N, d) and centroids (C, d) fp16/bf16/fp32, any strides; labels (N,) int64 in [0, C)
    (ignored rows already mapped to a valid class). Returns fp32 tensors (row_am (N,), target_cos (N,),
    lse (N,), x_norm (N,), w_norm (C,), off_o (N, d), off_mass (N,)); the last two are the
    off-target sums that dL/dx needs, sum_{j != y} p_ij times w^_j and 1, computed only when need_dx
    (else empty).
    """
    features, centroids = _tile_addressable(features), _tile_addressable(centroids)
    n_rows, dim = features.shape
    n_classes = centroids.shape[0]
    device = features.device
    f32 = dict(dtype=torch.float32, device=device)
    d_pad, fp32 = padded_dim(dim), fp32_operands(features.dtype, centroids.dtype)
    x_norm = _row_norms(features)
    w_norm = _row_norms(centroids)
    # A fixed per-row reference where it is safe (bf16/fp32 operands, moderate s): no running max.
    fixed = reference_is_safe(s, m, n_classes, torch.promote_types(features.dtype, centroids.dtype))
    ref = row_references(features, centroids, labels, x_norm, w_norm, s, m)[1] if fixed else torch.empty(0, **f32)

    classes_per_piece, n_pieces = split_evenly(n_classes, triton.cdiv(n_rows, NOMINAL_BLOCK), device)
    max_part = torch.empty(n_pieces, n_rows, **f32)
    sum_part = torch.empty(n_pieces, n_rows, **f32)
    tcos_part = torch.empty(n_pieces, n_rows, **f32)
    off_sum_part = torch.empty(n_pieces, n_rows, **f32) if need_dx else torch.empty(0, **f32)
    off_o_part = torch.empty(n_pieces, n_rows, dim, **f32) if need_dx else torch.empty(0, **f32)

    def sweep_grid(meta):
        return (triton.cdiv(n_rows, meta["BLOCK_M"]), n_pieces * triton.cdiv(dim, meta["D_SLICE"]))

    wrap_triton(forward_sweep_kernel(d_pad, fp32))[sweep_grid](
        features, centroids, labels, x_norm, w_norm,
        max_part, sum_part, tcos_part, off_sum_part, off_o_part, ref,
        n_rows, n_classes, dim, classes_per_piece,
        features.stride(0), features.stride(1), centroids.stride(0), centroids.stride(1),
        s * LOG2E, s * m * LOG2E, **forward_sweep_keys(n_rows, n_classes),
        NEED_DX=need_dx, FIXED_REF=fixed, UPCAST=_upcast(features, centroids),
        PRECISION=dot_precision(features.dtype, centroids.dtype), D_PAD=d_pad)

    row_am = torch.empty(n_rows, **f32)
    target_cos = torch.empty(n_rows, **f32)
    lse = torch.empty(n_rows, **f32)
    off_mass = torch.empty(n_rows, **f32) if need_dx else torch.empty(0, **f32)
    off_o = torch.empty(n_rows, dim, **f32) if need_dx else torch.empty(0, dim, **f32)
    wrap_triton(combine_pieces_kernel)[_rowwise_grid(n_rows)](
        max_part, sum_part, tcos_part, off_sum_part, off_o_part,
        row_am, target_cos, lse, off_mass, off_o,
        n_rows, dim, n_pieces, s, s * m,
        NEED_DX=need_dx, BLOCK_R=ROWWISE_BLOCK_ROWS, BLOCK_D=ROWWISE_BLOCK_D, num_warps=ROWWISE_WARPS)
    return row_am, target_cos, lse, x_norm, w_norm, off_o, off_mass


@triton_op("pedcc_triton::row_loss_grad_features", mutates_args=())
def row_loss_grad_features(grad_am: torch.Tensor, grad_cos: torch.Tensor, features: torch.Tensor,
                           centroids: torch.Tensor, labels: torch.Tensor, x_norm: torch.Tensor,
                           w_norm: torch.Tensor, off_o: torch.Tensor, off_mass: torch.Tensor,
                           s: float) -> torch.Tensor:
    """dL/dfeatures (N, d) in features' dtype from per-row grads grad_am, grad_cos (N,) fp32 and the
    rows saved by row_loss; O(N*d), no pass over the centroids."""
    n_rows, dim = features.shape
    grad_x = torch.empty(n_rows, dim, dtype=features.dtype, device=features.device)
    wrap_triton(grad_features_kernel)[_rowwise_grid(n_rows)](
        features, centroids, labels, x_norm, w_norm, off_o, off_mass, grad_am, grad_cos, grad_x, n_rows,
        centroids.shape[0], dim, features.stride(0), features.stride(1), centroids.stride(0), centroids.stride(1), s,
        BLOCK_R=ROWWISE_BLOCK_ROWS, BLOCK_D=ROWWISE_BLOCK_D, num_warps=ROWWISE_WARPS)
    return grad_x


@triton_op("pedcc_triton::row_loss_grad_centroids", mutates_args=())
def row_loss_grad_centroids(grad_am: torch.Tensor, grad_cos: torch.Tensor, features: torch.Tensor,
                            centroids: torch.Tensor, labels: torch.Tensor, x_norm: torch.Tensor,
                            w_norm: torch.Tensor, lse: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """dL/dcentroids (C, d) in centroids' dtype: one sweep over the rows per centroid tile,
    recomputing p_ij = exp(z_ij - lse_i); per-piece partial sums in fp32, added in a fixed order."""
    features, centroids = _tile_addressable(features), _tile_addressable(centroids)
    n_rows, dim = features.shape
    n_classes = centroids.shape[0]
    device = features.device
    d_pad, fp32 = padded_dim(dim), fp32_operands(features.dtype, centroids.dtype)
    rows_per_piece, n_pieces = split_evenly(n_rows, triton.cdiv(n_classes, NOMINAL_BLOCK), device)
    part = torch.empty(n_pieces, n_classes, dim, dtype=torch.float32, device=device)

    def sweep_grid(meta):
        return (triton.cdiv(n_classes, meta["BLOCK_M"]), n_pieces * triton.cdiv(dim, meta["D_SLICE"]))

    wrap_triton(grad_centroids_sweep_kernel(d_pad, fp32))[sweep_grid](
        features, centroids, labels, x_norm, w_norm, lse, grad_am, grad_cos, part,
        n_rows, n_classes, dim, rows_per_piece,
        features.stride(0), features.stride(1), centroids.stride(0), centroids.stride(1),
        s, s * LOG2E, s * m * LOG2E, **grad_centroids_sweep_keys(n_rows, n_classes),
        UPCAST=_upcast(features, centroids), PRECISION=dot_precision(features.dtype, centroids.dtype),
        D_PAD=d_pad)

    grad_w = torch.empty(n_classes, dim, dtype=centroids.dtype, device=device)
    wrap_triton(grad_centroids_finish_kernel)[_rowwise_grid(n_classes)](
        part, centroids, w_norm, grad_w, n_classes, dim, n_pieces, centroids.stride(0), centroids.stride(1), 0,
        BLOCK_R=ROWWISE_BLOCK_ROWS, BLOCK_D=ROWWISE_BLOCK_D, num_warps=ROWWISE_WARPS)
    return grad_w


def save_for_backward(ctx, inputs, output):
    features, centroids, labels, s, m, _ = inputs
    _, _, lse, x_norm, w_norm, off_o, off_mass = output
    ctx.save_for_backward(features, centroids, labels, lse, x_norm, w_norm, off_o, off_mass)
    ctx.s, ctx.m = s, m


def backward_with(op_name, grad_centroids):
    """The autograd backward of a row-loss op (pedcc_triton::row_loss or its 'gemm' twin, same
    outputs): dL/dx from the saved rows, dL/dW by the op's own centroid pass `grad_centroids`."""
    def backward(ctx, grad_am, grad_cos, *unused_grads):
        features, centroids, labels, lse, x_norm, w_norm, off_o, off_mass = ctx.saved_tensors
        grad_am = torch.zeros_like(lse) if grad_am is None else grad_am.float().contiguous()
        grad_cos = torch.zeros_like(lse) if grad_cos is None else grad_cos.float().contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            if off_o.shape[0] != features.shape[0]:
                raise RuntimeError(f"{op_name} ran with need_dx=False; call it with need_dx=True "
                                   "when features require grad")
            grad_x = row_loss_grad_features(grad_am, grad_cos, features, centroids, labels, x_norm, w_norm,
                                            off_o, off_mass, ctx.s)
        if ctx.needs_input_grad[1]:
            grad_w = grad_centroids(grad_am, grad_cos, features, centroids, labels, x_norm, w_norm,
                                    lse, ctx.s, ctx.m)
        return grad_x, grad_w, None, None, None, None
    return backward


row_loss.register_autograd(backward_with("pedcc_triton::row_loss", row_loss_grad_centroids),
                           setup_context=save_for_backward)


def _row_loss_op(strategy, s, m, n_rows, n_classes, operand):
    """The custom op of a strategy; 'epilogue' falls back to 'gemm' where its fixed reference could
    lose precision (fp16 operands, a very wide logit range) or the batch is beyond its grid."""
    if strategy == "sweep":
        return row_loss
    if strategy == "epilogue":
        from .epilogue_loss import applies, row_loss_epilogue

        if applies(float(s), float(m), n_rows, n_classes, operand):
            return row_loss_epilogue
    from .gemm_loss import row_loss_gemm

    return row_loss_gemm


def pedcc_loss_triton(features, labels, centroids, *, s, m, n, lam, reduction, mse_reduction, ignore_index):
    """PEDCC-Loss with the fused Triton kernels (no argument checks: call pedcc_loss for those).

    features: (N, d) fp16/bf16/fp32, any strides; labels: (N,) int64 in [0, C) or ignore_index;
    centroids: (C, d), features' dtype or fp32 (GEMMs then run in fp32). CUDA tensors, or CPU tensors
    under TRITON_INTERPRET=1. Returns a scalar, or (N,) for reduction='none' (0 on ignored rows);
    float32 for half inputs. Gradients come back in the inputs' dtypes.
    """
    for name, t in (("features", features), ("centroids", centroids)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"backend='triton' supports float16, bfloat16 and float32 {name}, "
                            f"got {t.dtype}; use backend='torch' for float64")
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    need_dx = features.requires_grad and torch.is_grad_enabled()
    op = _row_loss_op(loss_strategy(), s, m, features.shape[0], centroids.shape[0],
                      torch.promote_types(features.dtype, centroids.dtype))
    row_am, target_cos, *_ = op(features, centroids, safe_labels, float(s), float(m), need_dx)
    out_dtype = loss_dtype(torch.promote_types(features.dtype, centroids.dtype))
    return combine_rows(row_am.to(out_dtype), target_cos.to(out_dtype), valid, lam=lam, n=n,
                        reduction=reduction, mse_reduction=mse_reduction)
