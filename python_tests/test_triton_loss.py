"""The fused Triton loss (backend='triton') against the float64 reference: values, dL/dx and dL/dW.

Every test runs for each strategy of the backend (PEDCC_TRITON_LOSS: 'sweep', the fused sweep
kernels; 'gemm', library GEMMs over chunks of classes with Triton softmax kernels; 'epilogue', a
Triton GEMM with the softmax in its epilogue, then a library GEMM, per chunk). The same
file runs on CPU under TRITON_INTERPRET=1 (tiny shapes, set by conftest) and on a GPU without the
interpreter (larger shapes). Rule of DESIGN §6: |fast - truth| <= |reference in the same
dtype - truth| + tol, with truth the reference in float64 on the same (rounded) inputs.
"""
import pytest
import torch
import triton

import pedcc_kernels as pk
from pedcc_kernels.reference import loss_dtype, pedcc_loss_reference

from conftest import DEVICE, ON_GPU, assert_close_to_truth
from pedcc_kernels.kernels.fused_loss_config import LOSS_STRATEGIES

# (N, C, d). Under the interpreter the sweep tiles are 16 x 16 with d-tiles of 32, class pieces of
# 16 and row pieces of 16 (kernels/fused_loss_config.py), so these cover N = 1, C = 1, sizes that
# are not multiples of a tile, several class pieces and row pieces, the one-pass (d <= 32) and the
# d-sliced (d > 32) sweeps.
CPU_SHAPES = [(1, 1, 3), (1, 40, 20), (6, 1, 5), (19, 37, 20), (21, 50, 40), (40, 20, 9), (33, 70, 70)]
# On a GPU: d = 3, 64 (one pass), 512 (one pass or slices, autotuned), 1000 (slices, unaligned rows).
# Each new (d, dtype, layout) compiles and autotunes a few configs, hence few shapes.
GPU_SHAPES = [(1, 1, 3), (300, 5000, 64), (257, 2500, 512), (70, 1100, 1000)]
SHAPES = GPU_SHAPES if ON_GPU else CPU_SHAPES
OPTION_SHAPE = (300, 5000, 64) if ON_GPU else (19, 37, 20)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The interpreter turns loop bounds computed from program ids into ints through numpy's deprecated path.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


@pytest.fixture(autouse=True, params=LOSS_STRATEGIES)
def strategy(request, monkeypatch):
    monkeypatch.setenv("PEDCC_TRITON_LOSS", request.param)
    return request.param


def make_inputs(n_rows, n_classes, dim, seed, x_dtype=torch.float32, w_dtype=None, ignore_index=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, dim, dtype=torch.float64, generator=gen)
    w = torch.randn(n_classes, dim, dtype=torch.float64, generator=gen)
    y = torch.randint(0, n_classes, (n_rows,), generator=gen)
    if ignore_index is not None and n_rows > 2:
        y[1] = ignore_index
    return x.to(DEVICE, x_dtype), y.to(DEVICE), w.to(DEVICE, w_dtype or x_dtype)


def triton_loss(x, y, w, **kw):
    return pk.pedcc_loss(x, y, w, backend="triton", **kw)


def loss_and_grads(fn, x, y, w, *, grad_x=True, grad_w=True, seed=0, **kw):
    """The loss and the gradients of <loss, random grad_output> w.r.t. the inputs that require grad."""
    x = x.detach().clone().requires_grad_(grad_x)
    w = w.detach().clone().requires_grad_(grad_w)
    loss = fn(x, y, w, **kw)
    wrt = [t for t in (x, w) if t.requires_grad]
    if not wrt:
        return loss, []
    gen = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(loss.shape, dtype=torch.float64, generator=gen).to(loss.device, loss.dtype)
    return loss, list(torch.autograd.grad(loss, wrt, grad_out))


def check_against_truth(x, y, w, what, *, tol_dtype=None, grad_x=True, grad_w=True, **kw):
    """Value and gradients of the triton backend vs the float64 reference, by the DESIGN §6 rule."""
    tol_dtype = tol_dtype or x.dtype
    fast, fast_grads = loss_and_grads(triton_loss, x, y, w, grad_x=grad_x, grad_w=grad_w, **kw)
    same, same_grads = loss_and_grads(pedcc_loss_reference, x, y, w, grad_x=grad_x, grad_w=grad_w, **kw)
    truth, truth_grads = loss_and_grads(pedcc_loss_reference, x.double(), y, w.double(), grad_x=grad_x,
                                        grad_w=grad_w, **kw)
    assert fast.dtype == loss_dtype(torch.promote_types(x.dtype, w.dtype))
    assert fast.shape == truth.shape
    assert_close_to_truth(fast, same, truth, tol_dtype, f"{what}: loss")
    names = [n for n, g in (("dL/dx", grad_x), ("dL/dW", grad_w)) if g]
    inputs = [t for t, g in ((x, grad_x), (w, grad_w)) if g]
    for name, t, g_fast, g_same, g_truth in zip(names, inputs, fast_grads, same_grads, truth_grads):
        assert g_fast.dtype == t.dtype and g_fast.shape == t.shape, name
        assert_close_to_truth(g_fast, g_same, g_truth, tol_dtype, f"{what}: {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype):
    x, y, w = make_inputs(*shape, seed=sum(shape), x_dtype=dtype, ignore_index=-100)
    check_against_truth(x, y, w, f"{shape} {dtype}")


OPTIONS = ([dict(reduction=r, n=n, mse_reduction=mse) for r in ("mean", "sum") for n in (1.0, 2.0, 3.0)
            for mse in ("sum", "mean")]
           + [dict(reduction="none", n=n) for n in (1.0, 2.0, 3.0)]
           + [dict(s=64.0, m=0.35), dict(s=1.0, m=-0.2, lam=0.0), dict(s=30.0, m=0.0, lam=2.5, n=2.0)])


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_options(options):
    x, y, w = make_inputs(*OPTION_SHAPE, seed=1, ignore_index=-100)
    check_against_truth(x, y, w, str(options), **options)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignore_index(reduction):
    n_rows, n_classes, dim = OPTION_SHAPE
    x, y, w = make_inputs(n_rows, n_classes, dim, seed=2)
    y[::3] = -1
    check_against_truth(x, y, w, f"every third row ignored, {reduction}", reduction=reduction, ignore_index=-1)
    y[1:] = -1
    y[0] = n_classes - 1
    check_against_truth(x, y, w, f"one row left, {reduction}", reduction=reduction, ignore_index=-1)


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_features_with_float32_centroids(x_dtype):
    """As under autocast: the GEMMs run in float32 (promoted, like the reference)."""
    x, y, w = make_inputs(*SHAPES[-1], seed=3, x_dtype=x_dtype, w_dtype=torch.float32, ignore_index=-100)
    check_against_truth(x, y, w, f"{x_dtype} features, float32 centroids")


@pytest.mark.parametrize("lam", [0.0, 1.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_confident_rows_keep_accurate_gradients(dtype, lam):
    """Features next to their target among well-separated centroids (p_iy -> 1, as late in training):
    dL/dx is a small difference of O(1) terms, so a half-precision GEMM must not round the target's
    share of O_i = sum_j p_ij w^_j: rounded there, dL/dx would be off by about s * 2^-11 here, 30 times
    the true gradient. Centroid norms of 1.3 make 1/||w_j||, hence the rounding, inexact."""
    dim = 8
    w = 1.3 * torch.cat([torch.eye(dim), -torch.eye(dim)]).double()
    x, y, _ = make_inputs(OPTION_SHAPE[0], 2 * dim, dim, seed=12, x_dtype=torch.float64)
    x = w[y.cpu()] + 0.05 * x.cpu()
    x, w = x.to(DEVICE, dtype), w.to(DEVICE, dtype)
    check_against_truth(x, y, w, f"confident rows {dtype}", s=30.0, lam=lam, reduction="sum")


@pytest.mark.parametrize("grad_x,grad_w", [(True, False), (False, True), (False, False)])
def test_gradient_subsets(grad_x, grad_w):
    """Fixed centroids (the usual case), frozen features, and no gradient at all."""
    x, y, w = make_inputs(*OPTION_SHAPE, seed=4, ignore_index=-100)
    check_against_truth(x, y, w, f"grad_x={grad_x} grad_w={grad_w}", grad_x=grad_x, grad_w=grad_w)


def strided_views(n_rows, n_classes, dim, seed, dtype=torch.float32):
    """Non-contiguous features, labels and centroids of every common kind."""
    x, y, w = make_inputs(2 * n_rows, 2 * n_classes, 2 * dim, seed, x_dtype=dtype)
    y = y % n_classes
    return {
        "column-step views": (x[:n_rows, ::2], y[::2], w[:n_classes, ::2]),
        "row-step views": (x[::2, :dim], y[:n_rows], w[::2, :dim]),
        "transposed": (x[:n_rows, :dim].t().contiguous().t(), y[:n_rows], w[:n_classes, :dim].t().contiguous().t()),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["column-step views", "row-step views", "transposed"])
def test_non_contiguous_inputs(layout, dtype):
    x, y, w = strided_views(*SHAPES[-1], seed=5, dtype=dtype)[layout]
    assert not (x.is_contiguous() and w.is_contiguous())
    check_against_truth(x, y, w, f"{layout} {dtype}")


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_float32_inputs_under_autocast_stay_float32(autocast_dtype):
    """Autocast must not lower the loss's own GEMMs: float32 features and centroids keep float32
    accuracy (a training loop under autocast that casts features up for the loss expects it)."""
    x, y, w = make_inputs(*OPTION_SHAPE, seed=16, ignore_index=-100)
    with torch.autocast(DEVICE.type, dtype=autocast_dtype):
        fast, fast_grads = loss_and_grads(triton_loss, x, y, w, s=64.0)
    same, same_grads = loss_and_grads(pedcc_loss_reference, x, y, w, s=64.0)
    truth, truth_grads = loss_and_grads(pedcc_loss_reference, x.double(), y, w.double(), s=64.0)
    assert_close_to_truth(fast, same, truth, torch.float32, "loss under autocast")
    for name, g_fast, g_same, g_truth in zip(("dL/dx", "dL/dW"), fast_grads, same_grads, truth_grads):
        assert g_fast.dtype == torch.float32
        assert_close_to_truth(g_fast, g_same, g_truth, torch.float32, f"{name} under autocast")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy reports the NaNs
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_nan_features_give_nan(reduction):
    n_rows, n_classes, dim = OPTION_SHAPE
    x, y, w = make_inputs(n_rows, n_classes, dim, seed=6)
    x[2, 0] = float("nan")
    x, w = x.requires_grad_(), w.requires_grad_()
    loss = triton_loss(x, y, w, reduction=reduction)
    loss.sum().backward()
    assert x.grad is not None and w.grad is not None
    if reduction == "mean":
        assert torch.isnan(loss)
    else:
        assert torch.isnan(loss[2])
        clean = [i for i in range(n_rows) if i != 2]
        assert torch.isfinite(loss[clean]).all()
        assert torch.isfinite(x.grad[clean]).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_centroid_gives_nan():
    x, y, w = make_inputs(*OPTION_SHAPE, seed=7)
    w[-1, -1] = float("nan")
    assert torch.isnan(triton_loss(x, y, w))


def test_bad_labels_raise_before_launch():
    x, y, w = make_inputs(*OPTION_SHAPE, seed=8)
    y[0] = w.shape[0]
    with pytest.raises(ValueError, match="labels"):
        triton_loss(x, y, w)


def test_unchecked_bad_labels_do_not_crash():
    """check_labels=False skips the host sync; labels outside [0, C) then give a meaningless number
    (the caller's promise was broken) but must not read out of bounds."""
    x, y, w = make_inputs(*OPTION_SHAPE, seed=13)
    y[0], y[-1] = 10**6, -5
    x.requires_grad_()
    triton_loss(x, y, w, check_labels=False).backward()
    if ON_GPU:
        torch.cuda.synchronize()
    assert x.grad.shape == x.shape


def test_float64_is_refused_with_a_clear_error():
    x, y, w = make_inputs(*OPTION_SHAPE, seed=9, x_dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        triton_loss(x, y, w)


@pytest.mark.skipif(not ON_GPU, reason="backend='auto' picks triton only for CUDA tensors")
def test_auto_backend_keeps_float64_exact():
    x, y, w = make_inputs(*OPTION_SHAPE, seed=14, x_dtype=torch.float64)
    torch.testing.assert_close(pk.pedcc_loss(x, y, w), pedcc_loss_reference(x, y, w), rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not ON_GPU, reason="host-sync detection needs CUDA")
def test_no_host_sync_on_the_hot_path():
    x, y, w = make_inputs(*OPTION_SHAPE, seed=10, x_dtype=torch.bfloat16)
    x.requires_grad_()

    def step():
        triton_loss(x, y, w, check_labels=False).backward()

    step()  # compiles and autotunes, which may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def free_gpu_bytes():
    return torch.cuda.mem_get_info()[0] if ON_GPU else 0


@pytest.mark.skipif(not ON_GPU, reason="needs a GPU: too large for the interpreter")
@pytest.mark.parametrize("n_rows,n_classes,dim,need_gib", [
    (65536, 32769, 16, 2),       # N * C > 2^31
    (8, 2_150_000, 1000, 10),    # C * d > 2^31 elements of centroids (4.3 GB in bf16)
])
def test_offsets_past_int32(n_rows, n_classes, dim, need_gib):
    if free_gpu_bytes() < need_gib * 2**30:
        pytest.skip(f"needs {need_gib} GiB of free GPU memory")
    gen = torch.Generator(device=DEVICE).manual_seed(11)
    x = torch.randn(n_rows, dim, device=DEVICE, generator=gen, dtype=torch.bfloat16).requires_grad_()
    w = torch.randn(n_classes, dim, device=DEVICE, generator=gen, dtype=torch.bfloat16)
    y = torch.randint(0, n_classes, (n_rows,), device=DEVICE, generator=gen)
    y[-1] = n_classes - 1
    rows = torch.tensor([0, n_rows // 2, n_rows - 1], device=DEVICE)
    loss = triton_loss(x, y, w, reduction="none", check_labels=False)
    (grad_x,) = torch.autograd.grad(loss[rows].sum(), x)
    # The torch backend (chunked, float32 accumulation) on the sampled rows is the yardstick: a row's
    # loss and gradient depend only on that row and all centroids.
    x_rows = x.detach()[rows].requires_grad_()
    expected = pk.pedcc_loss(x_rows, y[rows], w, reduction="none", backend="torch")
    (expected_grad,) = torch.autograd.grad(expected.sum(), x_rows)
    torch.testing.assert_close(loss[rows], expected, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(grad_x[rows].float(), expected_grad.float(), atol=1e-2, rtol=2e-2)


def test_fp32_dot_precision_follows_torch(monkeypatch, strategy):
    """fp32 operands of the sweep: 3xTF32 at torch's 'highest', one TF32 pass where torch allows TF32
    itself; half operands and the interpreter are unaffected. (The 'gemm' strategy's torch.mm follows
    torch's setting by itself.)"""
    if strategy != "sweep":
        pytest.skip("sweep kernels only")
    from pedcc_kernels.kernels import fused_loss_config as cfg

    monkeypatch.setattr(cfg, "INTERPRET", False)
    previous = torch.get_float32_matmul_precision()
    try:
        for setting, expected in (("highest", "tf32x3"), ("high", "tf32"), ("medium", "tf32")):
            torch.set_float32_matmul_precision(setting)
            assert cfg.dot_precision(torch.float32, torch.bfloat16) == expected
            assert cfg.dot_precision(torch.bfloat16, torch.bfloat16) == "ieee"
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_one_slice_with_a_k_loop(dtype, monkeypatch, strategy):
    """The tile family where one slice holds all of d but the cosine GEMM loops over chunks of it
    (BLOCK_K < D_SLICE = D_PAD; on a GPU the d = 512 candidate (64, 32, 64, 512)). The autotuner of
    the GPU tests is off and the interpreter's one config never has this shape, so it is forced here."""
    if strategy != "sweep":
        pytest.skip("sweep kernels only")
    from pedcc_kernels.kernels import fused_loss_bwd, fused_loss_config, fused_loss_fwd

    dim = 40 if not ON_GPU else 512
    d_pad = fused_loss_config.padded_dim(dim)
    block = 16 if not ON_GPU else 64
    config = fused_loss_config.tile_config(block, 16 if not ON_GPU else 32, block, d_pad, 4 if not ON_GPU else 8, 1)
    for module in (fused_loss_fwd, fused_loss_bwd):
        monkeypatch.setattr(module, "sweep_configs", lambda d_pad, fp32: [config])
    kernels = (fused_loss_fwd.forward_sweep_kernel, fused_loss_bwd.grad_centroids_sweep_kernel)
    for kernel in kernels:
        kernel.cache_clear()
    try:
        x, y, w = make_inputs(21, 50, dim, seed=13, x_dtype=dtype, ignore_index=-100)
        check_against_truth(x, y, w, f"one slice, K loop, {dtype}")
        fp32 = fused_loss_config.fp32_operands(dtype)
        assert all(kernel(d_pad, fp32).configs == [config] for kernel in kernels)
        assert config.kwargs["BLOCK_K"] < config.kwargs["D_SLICE"] == d_pad
    finally:
        for kernel in kernels:  # later tests get the real configs back
            kernel.cache_clear()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_strategy_over_many_chunks(dtype, monkeypatch, strategy):
    """On a GPU the test shapes fit one chunk of the 'gemm' and 'epilogue' strategies; chunks of 256
    classes here make 2500 classes take 10 (a partial last one), so the sums across chunks and the
    folding of each chunk's P W product are exercised (under the interpreter chunks have 16 classes
    anyway)."""
    if strategy == "sweep":
        pytest.skip("chunked strategies only")
    from pedcc_kernels.kernels import gemm_loss

    monkeypatch.setenv("PEDCC_GEMM_CHUNK_MIB", "1e-6")  # the smallest chunk: CHUNK_ALIGN classes
    shape = (257, 2500, 512) if ON_GPU else (19, 37, 20)
    x, y, w = make_inputs(*shape, seed=15, x_dtype=dtype, ignore_index=-100)
    assert triton.cdiv(shape[1], gemm_loss.chunk_classes(shape[0], shape[1], x.element_size())) >= 3
    check_against_truth(x, y, w, f"many chunks {dtype}", s=30.0)


@pytest.mark.parametrize("setting", ["0", "-1", "nan", "inf", "lots"])
def test_gemm_chunk_setting_is_checked(setting, monkeypatch, strategy):
    if strategy != "gemm":
        pytest.skip("gemm strategy only")
    from pedcc_kernels.kernels import gemm_loss

    monkeypatch.setenv("PEDCC_GEMM_CHUNK_MIB", setting)
    with pytest.raises(ValueError, match="PEDCC_GEMM_CHUNK_MIB"):
        gemm_loss.chunk_bytes()


def test_gemm_chunk_setting_sizes_the_chunks(monkeypatch, strategy):
    if strategy != "gemm":
        pytest.skip("gemm strategy only")
    from pedcc_kernels.kernels import gemm_loss

    monkeypatch.setattr(gemm_loss, "INTERPRET", False)
    monkeypatch.delenv("PEDCC_GEMM_CHUNK_MIB", raising=False)
    assert gemm_loss.chunk_classes(1024, 100000, 2) == 10752  # 64 MiB / (1024 rows * 6 bytes), in 256s
    monkeypatch.setenv("PEDCC_GEMM_CHUNK_MIB", "16")
    assert gemm_loss.chunk_classes(1024, 100000, 2) == 2560
    assert gemm_loss.chunk_classes(1024, 1000, 4) == 1000
    assert gemm_loss.chunk_classes(10**6, 100000, 4) == gemm_loss.CHUNK_ALIGN
    # dL/dW also keeps the chunk's fp32 gradient rows (chunk x d) within the budget: 16 MiB / (4 * 512)
    assert gemm_loss.grad_chunk_classes(256, 10**6, 512, 2, dot_bytes=0) == 8192
    assert gemm_loss.grad_chunk_classes(4096, 10**6, 512, 2) == 512  # 16 MiB / (4096 * 6), in 256s


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_strategy_splits_chunks_for_few_rows(dtype, strategy, monkeypatch):
    """Few rows: the 'gemm' strategy cuts each chunk's columns into pieces (a max pass, the softmax
    pass, a merge), so that the grid still fills the GPU."""
    if strategy != "gemm":
        pytest.skip("gemm strategy only")
    from pedcc_kernels.kernels import gemm_loss

    if ON_GPU:  # chunks of 8192 (half) or 6144 (fp32) classes: split, split, then a last unsplit one
        monkeypatch.setenv("PEDCC_GEMM_CHUNK_MIB", "0.1875")
    else:  # chunks of 40 classes: pieces of 2 tiles with a partial last one, a partial last chunk
        monkeypatch.setattr(gemm_loss, "INTERPRET_CHUNK", 40)
    shape = (4, 20000, 512) if ON_GPU else (3, 70, 20)
    x, y, w = make_inputs(*shape, seed=17, x_dtype=dtype)
    chunk = gemm_loss.chunk_classes(shape[0], shape[1], x.element_size())
    piece_cols, n_pieces = gemm_loss.chunk_pieces(shape[0], chunk, x.device)
    assert n_pieces >= 2 and piece_cols >= 2 * gemm_loss.CHUNK_BLOCK_COLS and shape[1] > chunk
    check_against_truth(x, y, w, f"split chunks {dtype}", s=30.0)
    check_against_truth(x, y, w, f"split chunks, no gradient {dtype}", s=30.0, grad_x=False, grad_w=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_split_chunk_max_outside_the_first_piece(dtype, strategy):
    """Each row's largest logit sits in the chunk's second piece, at s = 64: probabilities written
    relative to a piece's own maximum instead of the chunk's would overflow in fp16 or lose the row."""
    if strategy != "gemm":
        pytest.skip("gemm strategy only")
    from pedcc_kernels.kernels import gemm_loss

    n_rows, n_classes, dim = (4, 9000, 64) if ON_GPU else (3, 16, 20)
    x, y, w = make_inputs(n_rows, n_classes, dim, seed=18, x_dtype=torch.float64)
    second_piece = gemm_loss.chunk_pieces(n_rows, n_classes, DEVICE)[0]
    assert second_piece + n_rows <= n_classes
    x = w[second_piece:second_piece + n_rows].cpu() + 0.05 * x.cpu()
    check_against_truth(x.to(DEVICE, dtype), y, w.to(DEVICE, dtype), f"max in piece 2 {dtype}", s=64.0)


def test_gemm_chunk_pieces_rule(monkeypatch, strategy):
    """Pieces are whole tiles (the kernels' vectorisation hint relies on it), cover the chunk exactly,
    stay within CUDA's grid limit, and appear only when the row blocks leave the GPU short."""
    if strategy != "gemm":
        pytest.skip("gemm strategy only")
    from pedcc_kernels.kernels import gemm_loss

    for name, value in (("INTERPRET", False), ("CHUNK_BLOCK_ROWS", 2), ("CHUNK_BLOCK_COLS", 1024),
                        ("MIN_PIECE_COLS", 4096)):
        monkeypatch.setattr(gemm_loss, name, value)
    monkeypatch.setattr(gemm_loss, "multiprocessors", lambda device: 132)
    cuda = torch.device("cuda")
    for n_rows in (1, 4, 100, 263, 264, 1024, 10**6):
        for cols in (1, 1000, 4096, 4097, 20000, 10**6):
            piece_cols, n_pieces = gemm_loss.chunk_pieces(n_rows, cols, cuda)
            assert piece_cols % 1024 == 0 and 1 <= n_pieces <= 65535
            assert (n_pieces - 1) * piece_cols < cols <= n_pieces * piece_cols
            if n_rows >= 528:  # 264 row blocks: 2 programs a multiprocessor already
                assert n_pieces == 1
    assert gemm_loss.chunk_pieces(4, 20000, cuda)[1] == 5


def test_epilogue_strategy_falls_back_where_its_reference_is_unsafe(strategy):
    """The 'epilogue' op runs for bf16/fp32 operands at ordinary (s, m); fp16 operands (which cannot
    hold its terms), logit ranges too wide for fp32 and batches beyond its grid take the 'gemm' op."""
    if strategy != "epilogue":
        pytest.skip("epilogue strategy only")
    from pedcc_kernels.kernels import epilogue_loss, gemm_loss
    from pedcc_kernels.kernels.fused_loss import _row_loss_op

    epilogue, gemm = epilogue_loss.row_loss_epilogue, gemm_loss.row_loss_gemm
    for operand in (torch.bfloat16, torch.float32):
        assert _row_loss_op("epilogue", 15.0, 0.5, 4096, 10**6, operand) is epilogue
        assert _row_loss_op("epilogue", 30.0, 0.0, 4096, 10**5, operand) is epilogue
        assert _row_loss_op("epilogue", 1.0, -0.2, 1, 37, operand) is epilogue
        assert _row_loss_op("epilogue", 64.0, 0.35, 4096, 10**5, operand) is gemm
    assert _row_loss_op("epilogue", 15.0, 0.5, 4096, 1000, torch.float16) is gemm
    assert _row_loss_op("gemm", 15.0, 0.5, 4096, 1000, torch.bfloat16) is gemm
    # Row blocks sit on the grid's second axis (at most 65535 programs): larger batches take 'gemm'.
    assert _row_loss_op("epilogue", 15.0, 0.5, epilogue_loss.MAX_ROWS + 1, 1000, torch.bfloat16) is gemm
    # More classes leave less room below the largest term: the widest safe s shrinks with C.
    widest = [widest_safe_scale(0.5, c) for c in (37, 3000, 10**6)]
    assert widest[0] > widest[1] > widest[2] > 40


def widest_safe_scale(m, n_classes):
    """The largest s (to 0.1) at which the 'epilogue' op takes bf16 operands, for m >= 0."""
    from pedcc_kernels.kernels.fixed_reference import reference_is_safe

    s = 0.1
    while reference_is_safe(s + 0.1, m, n_classes, torch.bfloat16):
        s += 0.1
    return s


@pytest.mark.parametrize("m", [0.5, -0.7, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rows_at_the_ends_of_the_logit_range(dtype, m):
    """At the widest s the 'epilogue' op still takes, rows whose cosines are all +-1: every other
    centroid along the row (C - 1 terms at the largest logit, 2^HEADROOM each against the epilogue's
    raised reference: the overflow side), a target opposite the row with the others opposite too (the
    largest term far below the reference), and confident rows. The row sums must neither overflow
    nor lose their terms; dL/dx is exactly radial before the projection (every centroid is collinear
    with the row), so any radial rounding left in it shows. Every strategy is held to this."""
    from pedcc_kernels.kernels.fixed_reference import HEADROOM_LOG2, logit_range, reference_is_safe
    from pedcc_kernels.kernels.fused_loss import LOG2E

    n_classes, dim = (3000, 64) if ON_GPU else (37, 20)
    s = widest_safe_scale(m, n_classes)
    assert reference_is_safe(s, m, n_classes, dtype) and not reference_is_safe(s + 0.2, m, n_classes, dtype)
    gen = torch.Generator().manual_seed(20)
    u = torch.nn.functional.normalize(torch.randn(dim, dtype=torch.float64, generator=gen), dim=0)
    w = u.repeat(n_classes, 1)
    w[0] = -u
    # (row, label): u with target -u, others +u; -u with target +u (class 1), others -u but class 0;
    # -u with target -u (confident); u with target u (confident, others alike).
    x = torch.stack([u, -u, -u, u])
    y = torch.tensor([0, 1, 0, 1])
    target_cos = (x * w[y]).sum(dim=1)
    raised = s * (target_cos - m) * LOG2E < logit_range(s, m)[1] * LOG2E - HEADROOM_LOG2
    assert raised[:2].all(), "the first two rows must take the raised reference"
    check_against_truth(x.to(DEVICE, dtype), y.to(DEVICE), w.to(DEVICE, dtype), f"ends m={m} {dtype}", s=s, m=m)


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-reference", "running-max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sweep_reference_modes(dtype, fixed, monkeypatch, strategy):
    """The sweep's two ways of scaling the exponents, on the same inputs: the fixed per-row reference
    (its default where safe) and the running max (fp16 and wide logit ranges; forced here for bf16 and
    fp32, which otherwise never take it at this s)."""
    if strategy != "sweep":
        pytest.skip("sweep only")
    from pedcc_kernels.kernels import fused_loss

    assert fused_loss.reference_is_safe(30.0, 0.5, 50, dtype)  # the default for these inputs is the fixed one
    monkeypatch.setattr(fused_loss, "reference_is_safe", lambda *args: fixed)
    shape = (257, 2500, 512) if ON_GPU else (21, 50, 40)
    x, y, w = make_inputs(*shape, seed=21, x_dtype=dtype, ignore_index=-100)
    check_against_truth(x, y, w, f"{'fixed' if fixed else 'running'} {dtype}", s=30.0)


def test_unknown_strategy_is_refused(monkeypatch, strategy):
    if strategy != "sweep":
        pytest.skip("one run is enough")
    x, y, w = make_inputs(*OPTION_SHAPE, seed=19)
    monkeypatch.setenv("PEDCC_TRITON_LOSS", "fused")
    with pytest.raises(ValueError, match="PEDCC_TRITON_LOSS"):
        triton_loss(x, y, w)
