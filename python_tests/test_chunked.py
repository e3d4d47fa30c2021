"""The chunked torch backend against the float64 reference: values, dL/dx and dL/dW."""
import pytest
import torch

import pedcc_kernels as pk
from pedcc_kernels.reference import pedcc_loss_reference

from conftest import DEVICE, assert_close_to_truth

SHAPES = [  # (N, C, d, chunk): N=1, C=1, C not a multiple of the chunk, d=3
    (1, 5, 4, 2),
    (6, 1, 3, 4),
    (9, 13, 3, 4),
    (17, 37, 10, 8),
    (5, 8, 7, 8),
]


def make_inputs(n_rows, n_classes, dim, seed, dtype=torch.float64, ignore=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, dim, dtype=torch.float64, generator=gen)
    w = torch.randn(n_classes, dim, dtype=torch.float64, generator=gen)
    y = torch.randint(0, n_classes, (n_rows,), generator=gen)
    if ignore and n_rows > 2:
        y[1] = -100
    return x.to(DEVICE, dtype), y.to(DEVICE), w.to(DEVICE, dtype)


def loss_and_grads(fn, x, y, w, grad_out_seed=0, **kw):
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    loss = fn(x, y, w, **kw)
    gen = torch.Generator().manual_seed(grad_out_seed)
    go = torch.randn(loss.shape, dtype=torch.float64, generator=gen).to(loss.device, loss.dtype)
    gx, gw = torch.autograd.grad(loss, (x, w), go)
    return loss, gx, gw


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n", [1.0, 2.0, 3.0])
def test_chunked_matches_reference_float64(shape, reduction, n):
    rows, classes, dim, chunk = shape
    x, y, w = make_inputs(rows, classes, dim, seed=rows * 100 + classes + int(n))
    kw = dict(s=15.0, m=0.5, n=n, lam=0.7, reduction=reduction, ignore_index=-100)
    want = loss_and_grads(pedcc_loss_reference, x, y, w, **kw)
    got = loss_and_grads(pk.pedcc_loss, x, y, w, backend="torch", chunk_size=chunk, **kw)
    for g, e, what in zip(got, want, ("loss", "dL/dx", "dL/dW")):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=what)


@pytest.mark.parametrize("mse_reduction", ["sum", "mean"])
def test_chunked_mse_reduction_and_margin_options(mse_reduction):
    x, y, w = make_inputs(11, 9, 6, seed=5)
    kw = dict(s=30.0, m=-0.2, n=2.0, lam=2.5, mse_reduction=mse_reduction)
    want = loss_and_grads(pedcc_loss_reference, x, y, w, **kw)
    got = loss_and_grads(pk.pedcc_loss, x, y, w, backend="torch", chunk_size=4, **kw)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_chunked_gradcheck():
    x, y, w = make_inputs(4, 7, 3, seed=11)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def fn(a, b):
        return pk.pedcc_loss(a, y, b, n=2.0, lam=0.5, backend="torch", chunk_size=3, reduction="none")

    assert torch.autograd.gradcheck(fn, (x, w), eps=1e-6, atol=1e-7)


def test_chunked_only_x_or_only_w_requires_grad():
    x, y, w = make_inputs(7, 10, 5, seed=2)
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(pk.pedcc_loss(xr, y, w, backend="torch", chunk_size=4), xr)
    (ex,) = torch.autograd.grad(pedcc_loss_reference(xr, y, w), xr)
    torch.testing.assert_close(gx, ex, rtol=1e-10, atol=1e-12)
    wr = w.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(pk.pedcc_loss(x, y, wr, backend="torch", chunk_size=4), wr)
    (ew,) = torch.autograd.grad(pedcc_loss_reference(x, y, wr), wr)
    torch.testing.assert_close(gw, ew, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_chunked_low_precision_within_reference_error(dtype):
    x64, y, w64 = make_inputs(13, 21, 16, seed=9)
    kw = dict(n=2.0, lam=0.5)
    truth = loss_and_grads(pedcc_loss_reference, x64, y, w64, **kw)
    same = loss_and_grads(pedcc_loss_reference, x64.to(dtype), y, w64.to(dtype), **kw)
    fast = loss_and_grads(pk.pedcc_loss, x64.to(dtype), y, w64.to(dtype), backend="torch", chunk_size=8, **kw)
    assert fast[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert fast[1].dtype == dtype and fast[2].dtype == dtype
    for f, s, t, what in zip(fast, same, truth, ("loss", "dL/dx", "dL/dW")):
        assert_close_to_truth(f, s, t, dtype, what)


def test_chunked_bf16_features_with_fp32_centroids():
    x64, y, w64 = make_inputs(10, 12, 8, seed=4)
    truth = loss_and_grads(pedcc_loss_reference, x64, y, w64)
    same = loss_and_grads(pedcc_loss_reference, x64.bfloat16(), y, w64.float())
    fast = loss_and_grads(pk.pedcc_loss, x64.bfloat16(), y, w64.float(), backend="torch", chunk_size=5)
    assert fast[1].dtype == torch.bfloat16 and fast[2].dtype == torch.float32
    for f, s, t in zip(fast, same, truth):
        assert_close_to_truth(f, s, t, torch.bfloat16)


def test_chunked_non_contiguous_inputs():
    x, y, w = make_inputs(8, 10, 6, seed=8)
    x_nc = torch.cat([x, x], dim=1)[:, ::2]
    w_nc = w.t().contiguous().t()
    assert not x_nc.is_contiguous() and not w_nc.is_contiguous()
    want = loss_and_grads(pedcc_loss_reference, x_nc, y, w_nc)
    got = loss_and_grads(pk.pedcc_loss, x_nc, y, w_nc, backend="torch", chunk_size=3)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_chunked_nan_features_give_nan_loss():
    x, y, w = make_inputs(4, 6, 5, seed=1, ignore=False)
    x[2, 3] = float("nan")
    assert torch.isnan(pk.pedcc_loss(x, y, w, backend="torch", chunk_size=4))
    rows = pk.pedcc_loss(x, y, w, backend="torch", chunk_size=4, reduction="none")
    assert torch.isnan(rows[2]) and torch.isfinite(rows[[0, 1, 3]]).all()


def test_chunked_zero_feature_row_matches_reference():
    x, y, w = make_inputs(4, 6, 5, seed=12, ignore=False)
    x[0] = 0.0
    want = loss_and_grads(pedcc_loss_reference, x, y, w)
    got = loss_and_grads(pk.pedcc_loss, x, y, w, backend="torch", chunk_size=4)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_all_rows_ignored_follows_cross_entropy_mean_convention():
    x, _, w = make_inputs(3, 4, 5, seed=3)
    y = torch.full((3,), -100, device=DEVICE)
    ref = pedcc_loss_reference(x, y, w)
    got = pk.pedcc_loss(x, y, w, backend="torch")
    assert torch.isnan(ref) and torch.isnan(got)
    assert pk.pedcc_loss(x, y, w, backend="torch", reduction="sum").item() == 0.0
