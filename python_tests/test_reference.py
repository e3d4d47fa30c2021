"""The unfused reference against the formulas of DESIGN §2 written out row by row, and its autograd
gradients against the closed-form backward of DESIGN §2."""
import math

import pytest
import torch

from pedcc_kernels.reference import pedcc_loss_reference


def loop_loss(x, y, w, *, s, m, n, lam, reduction, mse_reduction, ignore_index):
    """DESIGN §2 with Python loops over rows and classes, float64."""
    rows_am, rows_mse = [], []
    for i in range(x.shape[0]):
        if int(y[i]) == ignore_index:
            rows_am.append(0.0)
            rows_mse.append(0.0)
            continue
        xi = x[i] / max(float(x[i].norm()), 1e-12)
        z = []
        for j in range(w.shape[0]):
            cos = float(xi @ (w[j] / max(float(w[j].norm()), 1e-12)))
            z.append(s * (cos - (m if j == int(y[i]) else 0.0)))
            if j == int(y[i]):
                cos_y = cos
        top = max(z)
        lse = top + math.log(sum(math.exp(v - top) for v in z))
        rows_am.append(lse - z[int(y[i])])
        rows_mse.append(1.0 - cos_y)
    root = (lambda v: v ** (1.0 / n) if v > 0 else 0.0)
    if reduction == "none":
        return torch.tensor([a + lam * root(b) for a, b in zip(rows_am, rows_mse)], dtype=torch.float64)
    n_valid = sum(int(v) != ignore_index for v in y)
    am, mse = sum(rows_am), sum(rows_mse)
    if reduction == "mean":
        am /= n_valid
    if mse_reduction == "mean":
        mse /= n_valid
    return torch.tensor(am + lam * root(mse), dtype=torch.float64)


def closed_form_grads(x, y, w, *, s, m, n, lam, mse_reduction):
    """dL/dx and dL/dw of DESIGN §2 for reduction='mean', no ignored rows, float64."""
    x_norm = x.norm(dim=1, keepdim=True)
    w_norm = w.norm(dim=1, keepdim=True)
    x_hat, w_hat = x / x_norm, w / w_norm
    cos = x_hat @ w_hat.t()
    onehot = torch.nn.functional.one_hot(y, w.shape[0]).double()
    p = torch.softmax(s * (cos - m * onehot), dim=1)
    rows = x.shape[0]
    mse = (1 - (cos * onehot).sum(1)).sum()
    scale = 1.0 / rows if mse_reduction == "mean" else 1.0
    mse = mse * scale
    b = lam / n * mse ** (1.0 / n - 1.0) * scale
    g = (s / rows) * (p - onehot) - b * onehot
    grad_x_hat = g @ w_hat
    grad_x = (grad_x_hat - (g * cos).sum(1, keepdim=True) * x_hat) / x_norm
    grad_w_hat = g.t() @ x_hat
    grad_w = (grad_w_hat - (grad_w_hat * w_hat).sum(1, keepdim=True) * w_hat) / w_norm
    return grad_x, grad_w


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("mse_reduction", ["sum", "mean"])
@pytest.mark.parametrize("n", [1.0, 2.0, 3.0])
def test_reference_matches_row_by_row_formula(reduction, mse_reduction, n):
    gen = torch.Generator().manual_seed(int(n * 10) + len(reduction) + len(mse_reduction))
    x = torch.randn(6, 5, dtype=torch.float64, generator=gen)
    w = torch.randn(7, 5, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 7, (6,), generator=gen)
    y[3] = -100
    kw = dict(s=12.0, m=0.35, n=n, lam=0.8, reduction=reduction, mse_reduction=mse_reduction, ignore_index=-100)
    got = pedcc_loss_reference(x, y, w, **kw)
    torch.testing.assert_close(got, loop_loss(x, y, w, **kw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("mse_reduction", ["sum", "mean"])
def test_reference_autograd_matches_closed_form_backward(n, mse_reduction):
    gen = torch.Generator().manual_seed(7 + int(n))
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randint(0, 9, (5,), generator=gen)
    kw = dict(s=15.0, m=0.5, n=n, lam=1.3, mse_reduction=mse_reduction)
    loss = pedcc_loss_reference(x, y, w, reduction="mean", **kw)
    gx, gw = torch.autograd.grad(loss, (x, w))
    ex, ew = closed_form_grads(x.detach(), y, w.detach(), **kw)
    torch.testing.assert_close(gx, ex, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, ew, rtol=1e-10, atol=1e-12)


def test_mse_term_is_half_squared_distance_of_normalised_vectors():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 6, dtype=torch.float64, generator=gen)
    w = torch.randn(4, 6, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 4, (8,), generator=gen)
    with_mse = pedcc_loss_reference(x, y, w, lam=1.0, reduction="sum")
    without = pedcc_loss_reference(x, y, w, lam=0.0, reduction="sum")
    x_hat = x / x.norm(dim=1, keepdim=True)
    w_hat = w / w.norm(dim=1, keepdim=True)
    expected = 0.5 * ((x_hat - w_hat[y]) ** 2).sum()
    torch.testing.assert_close(with_mse - without, expected, rtol=1e-12, atol=1e-12)


def test_root_of_zero_mse_has_zero_gradient_not_nan():
    w = torch.eye(3, dtype=torch.float64)
    x = w.clone().requires_grad_(True)
    y = torch.arange(3)
    loss = pedcc_loss_reference(x, y, w, n=2.0, m=0.0)
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(gx).all()


def test_reference_gives_float32_loss_for_half_inputs():
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    w = torch.randn(5, 8)
    loss = pedcc_loss_reference(x, torch.tensor([0, 1, 2, 4]), w)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
