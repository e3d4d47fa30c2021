"""Bad input raises before any kernel runs, with an error that names the argument."""
import pytest
import torch

import pedcc_kernels as pk


def good():
    return torch.randn(4, 6), torch.tensor([0, 2, 1, 4]), torch.randn(5, 6)


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("mutate, exc, word", [
    (lambda x, y, w: (x, y.float(), w), TypeError, "labels"),
    (lambda x, y, w: (x, y.tolist(), w), TypeError, "labels"),
    (lambda x, y, w: (x, torch.tensor([0, 2, 1, 5]), w), ValueError, "labels"),
    (lambda x, y, w: (x, torch.tensor([0, -1, 1, 2]), w), ValueError, "labels"),
    (lambda x, y, w: (x, y[:3], w), ValueError, "labels"),
    (lambda x, y, w: (x, y[:, None], w), ValueError, "labels"),
    (lambda x, y, w: (x[:0], y[:0], w), ValueError, "features"),
    (lambda x, y, w: (x, y, w[:0]), ValueError, "centroids"),
    (lambda x, y, w: (x, y, w[:, :5]), ValueError, "dimension"),
    (lambda x, y, w: (x[:, :, None], y, w), ValueError, "features"),
    (lambda x, y, w: (x.long(), y, w), TypeError, "features"),
    (lambda x, y, w: (x, y, w.double()), TypeError, "centroids"),
    (lambda x, y, w: (x, y, w.half()), TypeError, "centroids"),
    (lambda x, y, w: (x, y.to("meta"), w), ValueError, "labels"),
    (lambda x, y, w: (x, y, w.to("meta")), ValueError, "centroids"),
])
def test_bad_tensors_raise_naming_the_argument(backend, mutate, exc, word):
    x, y, w = mutate(*good())
    with pytest.raises(exc, match=word):
        pk.pedcc_loss(x, y, w, backend=backend)


@pytest.mark.parametrize("kwargs, word", [
    (dict(s=0.0), "s must"),
    (dict(s=float("inf")), "s must"),
    (dict(n=0.5), "n must"),
    (dict(lam=-1.0), "lam must"),
    (dict(m=float("nan")), "m must"),
    (dict(reduction="avg"), "reduction"),
    (dict(mse_reduction="none"), "mse_reduction"),
    (dict(backend="cuda"), "backend"),
])
def test_bad_options_raise_naming_the_argument(kwargs, word):
    x, y, w = good()
    with pytest.raises(ValueError, match=word):
        pk.pedcc_loss(x, y, w, **kwargs)


def test_ignore_index_must_be_int():
    x, y, w = good()
    with pytest.raises(TypeError, match="ignore_index"):
        pk.pedcc_loss(x, y, w, ignore_index=1.5)


def test_ignore_index_rows_pass_the_label_check():
    x, y, w = good()
    y[0] = -7
    assert torch.isfinite(pk.pedcc_loss(x, y, w, ignore_index=-7))


def test_label_check_can_be_turned_off_for_the_hot_path(monkeypatch):
    from pedcc_kernels import _validate

    def syncing_check(*args):
        raise AssertionError("the label range check ran")

    monkeypatch.setattr(_validate, "check_label_range", syncing_check)
    x, y, w = good()
    loss = pk.pedcc_loss(x, y, w, check_labels=False, backend="torch")
    torch.testing.assert_close(loss, pk.pedcc_loss(x, y, w, backend="reference", check_labels=False))
    with pytest.raises(AssertionError, match="label range check ran"):
        pk.pedcc_loss(x, y, w, backend="torch")


def test_auto_backend_rule(monkeypatch):
    """'auto': triton for CUDA tensors unless an input is float64 (its kernels accumulate in
    float32), torch elsewhere. Decided without a GPU: only the device type and dtypes matter."""
    from pedcc_kernels import loss

    monkeypatch.setattr(loss, "triton_usable", lambda device: True)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert loss.resolve_backend("auto", cuda, (torch.bfloat16, torch.float32)) == "triton"
    assert loss.resolve_backend("auto", cuda, (torch.float64, torch.float64)) == "torch"
    assert loss.resolve_backend("auto", cuda, (torch.float32, torch.float64)) == "torch"
    assert loss.resolve_backend("auto", cpu, (torch.float32, torch.float32)) == "torch"


def test_triton_backend_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, y, w = good()
    with pytest.raises(ValueError, match="triton"):
        pk.pedcc_loss(x, y, w, backend="triton")


def test_int32_labels_are_accepted():
    x, y, w = good()
    torch.testing.assert_close(pk.pedcc_loss(x, y.int(), w), pk.pedcc_loss(x, y, w))
