"""A per-row reference fixed before a sweep over the classes, in place of FlashAttention's running max.

R_i = the target logit z_{i,y_i} (log2 units, from an O(N d) kernel), raised to z_max - HEADROOM_LOG2
when the target logit is far below the largest logit there can be (z_max = s log2(e) max(1, 1 - m)).
Every term 2^(z_ij - R_i) is then at most 2^HEADROOM, with no running max and no rescaling, and the
row's largest term is at least the target's own (1 unless R_i was raised). reference_is_safe says
where that keeps every row sum exact to fp32 rounding for any input: bf16/fp32 operands (the
probabilities are written in the operand dtype; fp16 cannot hold 2^HEADROOM) and a logit range
s (2 + |m|) log2(e) that leaves the sum clear of fp32's underflow. Used by the 'epilogue' strategy
(one pass, the softmax in a GEMM's epilogue) and by the sweep (no max reduction per tile).
"""
import math
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .fused_loss_config import ROWWISE_BLOCK_D, ROWWISE_BLOCK_ROWS, ROWWISE_WARPS
from .fused_loss_fwd import NORM_EPS

LOG2E = math.log2(math.e)
# Largest term 2^HEADROOM_LOG2 relative to the reference: C terms of it stay below fp32's 2^128 for
# C < 2^27, and bf16 (fp32's exponent range) holds each.
HEADROOM_LOG2 = 100.0
# Relative error allowed from terms flushed to zero below fp32's 2^-126 (ptxas flushes exp2.approx's
# subnormals), against the row's largest term: 2^-30.
FLUSH_LOG2 = 126.0 - 30.0


def logit_range(s: float, m: float) -> Tuple[float, float]:
    """(lowest, highest) logit there can be: s cos off the target, s (cos - m) on it, cos in [-1, 1]."""
    return min(-s, -s - s * m), max(s, s - s * m)


def reference_is_safe(s: float, m: float, n_classes: int, operand: torch.dtype) -> bool:
    """Whether the fixed reference keeps every row's sum exact to fp32 rounding for any inputs
    (centroids of norm above 2^-27: P = p / ||w|| holds terms up to 2^HEADROOM; PEDCC centroids are
    unit vectors, and a smaller norm turns the gradient inf/NaN, never silently wrong).

    With R_i = max(z_iy, z_max - HEADROOM) every term is at most 2^HEADROOM, and the largest term of a
    row is at least 2^(HEADROOM - span), span = (z_max - z_min) log2(e): the target's own term when
    R_i was raised. Terms below 2^-126 flush to zero, C of them at most, which must stay 2^-30 under
    that largest term. Half operands: bf16 holds 2^HEADROOM, fp16 (max 65504) does not."""
    if operand not in (torch.bfloat16, torch.float32):
        return False
    low, high = logit_range(s, m)
    log2_classes = math.log2(max(2, n_classes))
    if log2_classes + HEADROOM_LOG2 >= 127.0:
        return False
    return (high - low) * LOG2E <= HEADROOM_LOG2 + FLUSH_LOG2 - log2_classes


@triton.jit
def target_reference_kernel(x_ptr, w_ptr, labels_ptr, x_norm_ptr, w_norm_ptr, tcos_ptr, ref_ptr, run_sum_ptr,
                            n_rows, n_classes, dim, stride_xr, stride_xd, stride_wc, stride_wd,
                            scale_log2, margin_log2, floor_log2, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per row: the target cosine cos_{i,y_i} (fp32 dot of the raw rows, any dtypes and strides), the
    reference R_i = max(z_{i,y_i}, floor_log2) and the row sum's first term, the target's
    2^(z_{i,y_i} - R_i). Labels outside [0, C) (possible with check_labels=False) read no memory."""
    # Under torch.compile, Inductor passes Python floats as fp64 scalars: fp32 keeps the loop types.
    scale_log2 = tl.cast(scale_log2, tl.float32)
    margin_log2 = tl.cast(margin_log2, tl.float32)
    floor_log2 = tl.cast(floor_log2, tl.float32)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    label_ok = row_ok & (labels >= 0) & (labels < n_classes)
    dot = tl.zeros([BLOCK_R], dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (ds[None, :] < dim)
        x = tl.load(x_ptr + rows[:, None] * stride_xr + ds[None, :] * stride_xd, mask=ok, other=0.0)
        w = tl.load(w_ptr + labels[:, None] * stride_wc + ds[None, :] * stride_wd, mask=ok & label_ok[:, None],
                    other=0.0)
        dot += tl.sum(x.to(tl.float32) * w.to(tl.float32), axis=1)
    x_norm = tl.maximum(tl.load(x_norm_ptr + rows, mask=row_ok, other=1.0), NORM_EPS)
    w_norm = tl.maximum(tl.load(w_norm_ptr + labels, mask=label_ok, other=1.0), NORM_EPS)
    cos = dot / x_norm / w_norm
    z_target = cos * scale_log2 - margin_log2
    ref = tl.maximum(z_target, floor_log2)  # a NaN z_target gives floor_log2; the NaN cosines carry on
    tl.store(tcos_ptr + rows, cos, mask=row_ok)
    tl.store(ref_ptr + rows, ref, mask=row_ok)
    tl.store(run_sum_ptr + rows, tl.exp2(z_target - ref), mask=row_ok)



def row_references(features: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, x_norm: torch.Tensor,
                   w_norm: torch.Tensor, s: float, m: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target_cos, ref, target_term), each (N,) fp32: cos_{i,y_i}, R_i (log2 units) and
    2^(z_{i,y_i} - R_i), for features (N, d) and centroids (C, d) of any float dtypes and strides,
    labels (N,) int64 and the fp32 row norms. Call where reference_is_safe holds."""
    n_rows, dim = features.shape
    f32 = dict(dtype=torch.float32, device=features.device)
    target_cos, ref, target_term = (torch.empty(n_rows, **f32) for _ in range(3))
    high = logit_range(s, m)[1]
    wrap_triton(target_reference_kernel)[(triton.cdiv(n_rows, ROWWISE_BLOCK_ROWS),)](
        features, centroids, labels, x_norm, w_norm, target_cos, ref, target_term, n_rows, centroids.shape[0], dim,
        features.stride(0), features.stride(1), centroids.stride(0), centroids.stride(1),
        s * LOG2E, s * m * LOG2E, high * LOG2E - HEADROOM_LOG2,
        BLOCK_R=ROWWISE_BLOCK_ROWS, BLOCK_D=ROWWISE_BLOCK_D, num_warps=ROWWISE_WARPS)
    return target_cos, ref, target_term
