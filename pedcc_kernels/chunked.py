"""PEDCC-Loss in plain torch, chunked over the classes: any device, memory O(N*chunk + N*d).

Forward: one sweep over centroid chunks keeps FlashAttention-style online-softmax accumulators per row
(running max, running sum, O_i = sum_j p_ij w^_j), which is all dL/dx needs (DESIGN §2); the other
accumulator of DESIGN §2, P_i = sum_j p_ij cos_ij, equals x^_i . O_i and so costs nothing to keep. dL/dW, only when the centroids require grad, takes a second sweep that recomputes p from
the saved log-sum-exp. The (N, C) logits never exist.
"""
import torch

from .reference import EPS, combine_rows, loss_dtype

DEFAULT_CHUNK = 4096


def accumulation_dtype(*tensors):
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def normalize_with_norm(t):
    norm = t.norm(dim=1)
    return t / norm.clamp_min(EPS)[:, None], norm


def through_normalization(grad_hat, hat, norm):
    """Chain a gradient w.r.t. t/max(||t||, eps) back to t (rows)."""
    radial = (grad_hat * hat).sum(1, keepdim=True)
    above = (norm > EPS)[:, None]
    return torch.where(above, grad_hat - radial * hat, grad_hat) / norm.clamp_min(EPS)[:, None]


def margin_logits(cos, labels, c0, s, m):
    """s * (cos - m [j == y_i]) for a chunk of classes starting at c0, in place of cos, without a host
    sync (the chunk-sized buffer is the only one of the sweep)."""
    z = cos.mul_(s)
    local = labels - c0
    in_chunk = (local >= 0) & (local < cos.shape[1])
    delta = torch.where(in_chunk, -s * m, 0.0).to(z.dtype)
    z.scatter_add_(1, local.clamp(0, cos.shape[1] - 1)[:, None], delta[:, None])
    return z, in_chunk, local


class ChunkedRowLoss(torch.autograd.Function):
    """(features, centroids, labels) -> per-row (logsumexp_j z_ij - z_iy, cos_iy), chunked over C."""

    @staticmethod
    def forward(ctx, features, centroids, labels, s, m, chunk):
        acc = accumulation_dtype(features, centroids)
        need_dx = ctx.needs_input_grad[0]
        x_hat, x_norm = normalize_with_norm(features.to(acc))
        n_rows, dim = x_hat.shape
        run_max = torch.full((n_rows,), float("-inf"), dtype=acc, device=x_hat.device)
        run_sum = torch.zeros(n_rows, dtype=acc, device=x_hat.device)
        o_acc = torch.zeros(n_rows, dim, dtype=acc, device=x_hat.device) if need_dx else None
        for c0 in range(0, centroids.shape[0], chunk):
            w_hat, _ = normalize_with_norm(centroids[c0:c0 + chunk].to(acc))
            z, _, _ = margin_logits(x_hat @ w_hat.t(), labels, c0, s, m)
            new_max = torch.maximum(run_max, z.amax(1))
            rescale = torch.exp(run_max - new_max)
            p = z.sub_(new_max[:, None]).exp_()
            run_sum = run_sum * rescale + p.sum(1)
            if need_dx:
                o_acc = torch.addmm(o_acc * rescale[:, None], p, w_hat)
            run_max = new_max
        lse = run_max + torch.log(run_sum)
        w_target, _ = normalize_with_norm(centroids[labels].to(acc))
        target_cos = (x_hat * w_target).sum(1)
        row_am = lse - s * (target_cos - m)
        if need_dx:
            o_acc = o_acc / run_sum[:, None]
        ctx.save_for_backward(features, centroids, labels, lse, target_cos, o_acc)
        ctx.s, ctx.m, ctx.chunk = s, m, chunk
        return row_am, target_cos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_am, grad_cos):
        features, centroids, labels, lse, target_cos, o_acc = ctx.saved_tensors
        s, m, chunk = ctx.s, ctx.m, ctx.chunk
        acc = lse.dtype
        grad_am = torch.zeros_like(lse) if grad_am is None else grad_am.to(acc)
        grad_cos = torch.zeros_like(lse) if grad_cos is None else grad_cos.to(acc)
        x_hat, x_norm = normalize_with_norm(features.to(acc))
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            w_target, _ = normalize_with_norm(centroids[labels].to(acc))
            # sum_j g_ij w^_j with g_ij = a_i s (p_ij - d_ij) + b_i d_ij; through_normalization takes
            # its radial part x^_i . (...), which is sum_j g_ij cos_ij.
            g_w = (grad_am * s)[:, None] * (o_acc - w_target) + grad_cos[:, None] * w_target
            grad_x = through_normalization(g_w, x_hat, x_norm).to(features.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty(centroids.shape, dtype=centroids.dtype, device=centroids.device)
            target_weight = grad_cos - grad_am * s
            for c0 in range(0, centroids.shape[0], chunk):
                w_hat, w_norm = normalize_with_norm(centroids[c0:c0 + chunk].to(acc))
                z, in_chunk, local = margin_logits(x_hat @ w_hat.t(), labels, c0, s, m)
                g = z.sub_(lse[:, None]).exp_().mul_((grad_am * s)[:, None])
                g.scatter_add_(1, local.clamp(0, z.shape[1] - 1)[:, None],
                               torch.where(in_chunk, target_weight, 0.0)[:, None])
                grad_w[c0:c0 + chunk] = through_normalization(g.t() @ x_hat, w_hat, w_norm)
        return grad_x, grad_w, None, None, None, None


def pedcc_loss_chunked(features, labels, centroids, *, s=15.0, m=0.5, n=1.0, lam=1.0,
                       reduction="mean", mse_reduction="sum", ignore_index=-100, chunk_size=None):
    """PEDCC-Loss chunked over classes (no argument checks: call pedcc_loss for those).

    features: (N, d) float; labels: (N,) int; centroids: (C, d) float. Accumulates in float32
    (float64 when an input is float64). Returns a scalar, or (N,) for reduction='none'.
    """
    chunk = int(chunk_size or DEFAULT_CHUNK)
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels)).long()
    row_am, target_cos = ChunkedRowLoss.apply(features, centroids, safe_labels, float(s), float(m), chunk)
    out_dtype = loss_dtype(torch.promote_types(features.dtype, centroids.dtype))
    return combine_rows(row_am.to(out_dtype), target_cos.to(out_dtype), valid, lam=lam, n=n,
                        reduction=reduction, mse_reduction=mse_reduction)
