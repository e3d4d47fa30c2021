"""Triton building blocks shared by the forward and backward sweeps of the fused PEDCC-Loss."""
import triton
import triton.language as tl


@triton.jit
def load_rows(base, rows, ok, stride_r, stride_d, dim, D_PAD: tl.constexpr, UPCAST: tl.constexpr):
    """The (len(rows), D_PAD) tile of rows base + rows * stride_r (columns at stride_d); rows outside
    ok and columns past dim read as 0. In fp32 when UPCAST."""
    ds = tl.arange(0, D_PAD)
    tile = tl.load(base + rows[:, None] * stride_r + ds[None, :] * stride_d, mask=ok[:, None] & (ds[None, :] < dim),
                   other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def sliced_dot_t(a_base, a_rows, a_ok, stride_a, stride_ad, b_base, b_rows, b_ok, stride_b, stride_bd, dim,
                 BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
                 PRECISION: tl.constexpr):
    """A @ B^T over the whole feature dimension in BLOCK_K slices, accumulated in fp32.

    A is the (BLOCK_A, dim) tile of rows a_base + a_rows * stride_a (columns at stride_ad), B the
    (BLOCK_B, dim) tile of rows b_base + b_rows * stride_b; rows outside a_ok / b_ok and columns past
    dim read as 0. UPCAST: convert both slices to fp32 first (mixed or bf16-under-the-interpreter
    operands). Returns the (BLOCK_A, BLOCK_B) fp32 product.
    """
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < dim
        a = tl.load(a_base + a_rows[:, None] * stride_a + ks[None, :] * stride_ad,
                    mask=a_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_base + b_rows[:, None] * stride_b + ks[None, :] * stride_bd,
                    mask=b_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    return acc
