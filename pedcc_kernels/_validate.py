"""Argument checks shared by every backend: bad input raises before any kernel runs, naming the argument."""
import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")
MSE_REDUCTIONS = ("sum", "mean")


def check_float_matrix(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has zero columns: shape {tuple(t.shape)}")


def check_int(name, v, low):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")


def check_scalar(name, value, *, low=None, low_inclusive=True):
    if isinstance(value, (torch.SymInt, torch.SymFloat)):
        return  # a symbolic number under torch.compile(dynamic=True) has no value to check
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {op} {low}, got {value}")


def check_loss_args(features, labels, centroids, *, s, m, n, lam, reduction, mse_reduction,
                    ignore_index, check_labels):
    """Validate the arguments of pedcc_loss; returns nothing, raises ValueError/TypeError."""
    check_float_matrix("features", features)
    check_float_matrix("centroids", centroids)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be int64 (or int32) class indices, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must have shape ({features.shape[0]},) to match features, "
                         f"got {tuple(labels.shape)}")
    if centroids.shape[1] != features.shape[1]:
        raise ValueError(f"centroids have dimension {centroids.shape[1]} but features have "
                         f"{features.shape[1]}")
    for name, t in (("labels", labels), ("centroids", centroids)):
        if t.device != features.device:
            raise ValueError(f"{name} is on {t.device} but features is on {features.device}")
    if centroids.dtype != features.dtype and centroids.dtype != torch.float32:
        raise TypeError(f"centroids must have the dtype of features ({features.dtype}) or float32, "
                        f"got {centroids.dtype}")
    check_scalar("s", s, low=0, low_inclusive=False)
    check_scalar("m", m)
    check_scalar("n", n, low=1)
    check_scalar("lam", lam, low=0)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if mse_reduction not in MSE_REDUCTIONS:
        raise ValueError(f"mse_reduction must be one of {MSE_REDUCTIONS}, got {mse_reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if check_labels:
        check_label_range(labels, centroids.shape[0], ignore_index)


def check_label_range(labels, num_classes, ignore_index):
    """Labels in [0, C) or equal to ignore_index. Synchronises with the device once."""
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    if bool(bad.any()):
        first = labels[bad][0].item()
        raise ValueError(f"labels must lie in [0, {num_classes}) or equal ignore_index={ignore_index}; "
                         f"found {first}")
