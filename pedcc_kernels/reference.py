"""Unfused PyTorch PEDCC-Loss (DESIGN §2): the ground truth for tests and the baseline of benchmarks.

It materialises the (N, C) logits exactly as a user would with plain PyTorch ops, and imports nothing
of the package.
"""
import torch
import torch.nn.functional as F

EPS = 1e-12


def normalize_rows(t: torch.Tensor) -> torch.Tensor:
    """t / max(||t||, eps) per row, as F.normalize does."""
    return t / t.norm(dim=-1, keepdim=True).clamp_min(EPS)


def root_with_zero_guard(v: torch.Tensor, n: float) -> torch.Tensor:
    """v ** (1/n) for v >= 0, with value and gradient 0 where v <= 0 (the root's slope is infinite there)."""
    if n == 1.0:
        return v
    positive = v > 0
    safe = torch.where(positive, v, torch.ones_like(v))
    return torch.where(positive, safe ** (1.0 / n), torch.zeros_like(v))


def combine_rows(row_am, target_cos, valid, *, lam, n, reduction, mse_reduction):
    """The reductions of DESIGN §2 from per-row quantities.

    row_am: (N,) logsumexp_j z_ij - z_{i,y_i}; target_cos: (N,) cos_{i,y_i}; valid: (N,) bool.
    Shared by every backend, so options behave identically everywhere.
    """
    zero = torch.zeros((), dtype=row_am.dtype, device=row_am.device)
    row_am = torch.where(valid, row_am, zero)
    row_mse = torch.where(valid, 1.0 - target_cos, zero)
    if reduction == "none":
        return row_am + lam * root_with_zero_guard(row_mse, n)
    n_valid = valid.sum()
    am = row_am.sum()
    mse = row_mse.sum()
    if reduction == "mean":
        am = am / n_valid
    if mse_reduction == "mean":
        mse = mse / n_valid
    return am + lam * root_with_zero_guard(mse, n)


def compute_dtype(features: torch.Tensor, centroids: torch.Tensor) -> torch.dtype:
    return torch.promote_types(features.dtype, centroids.dtype)


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs give a float32 loss, as cross-entropy does under autocast."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def pedcc_loss_reference(features, labels, centroids, *, s=15.0, m=0.5, n=1.0, lam=1.0,
                         reduction="mean", mse_reduction="sum", ignore_index=-100):
    """PEDCC-Loss with plain PyTorch ops, materialising the (N, C) logits.

    features: (N, d) float; labels: (N,) int64 in [0, C) or ignore_index; centroids: (C, d) float.
    The GEMM runs in the promoted dtype of features and centroids; the softmax in float32 (or float64).
    Returns a scalar, or (N,) for reduction='none' (0 on ignored rows).
    """
    dtype = compute_dtype(features, centroids)
    out_dtype = loss_dtype(dtype)
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    cos = normalize_rows(features.to(dtype)) @ normalize_rows(centroids.to(dtype)).t()
    cos = cos.to(out_dtype)
    target_cos = cos.gather(1, safe_labels[:, None]).squeeze(1)
    margin = F.one_hot(safe_labels, cos.shape[1]).to(out_dtype) * m
    logits = s * (cos - margin)
    row_am = torch.logsumexp(logits, dim=1) - logits.gather(1, safe_labels[:, None]).squeeze(1)
    return combine_rows(row_am, target_cos, valid, lam=lam, n=n, reduction=reduction,
                        mse_reduction=mse_reduction)
