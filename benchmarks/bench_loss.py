"""PEDCC-Loss forward + backward: time and peak memory of our backends against the unfused reference
and against peers, on the same shapes.

    python benchmarks/bench_loss.py              # CPU: N=512, d=512, C in {1000, 10000, 50000}, fp32
    python benchmarks/bench_loss.py --device cuda   # GPU: d=512, N in {1024, 4096}, C in {1e3, 1e4, 1e5}, fp32+bf16
    python benchmarks/bench_loss.py --dry-run    # tiny shapes on the CPU, seconds
    python benchmarks/bench_loss.py --device cuda --N 128 256 --C 100000 --impls reference triton triton_gemm
                                                 # small batches (the gemm strategy splits chunks)

Each case times `loss = f(x, y, W); loss.backward()` with x requiring grad (and W too with --with-dw).
The centroids are random unit vectors: the loss's cost does not depend on how well they are spread.

Implementations (a missing one is skipped with the reason):
  reference           pedcc_kernels.reference.pedcc_loss_reference, eager (the baseline of every ratio)
  reference_compiled  the same under torch.compile (GPU by default; on a CPU with --compile)
  torch               pedcc_loss(backend="torch"): chunked over classes, one sweep for dL/dx
  triton              pedcc_loss(backend="triton"), default strategy: the fused sweep kernels (CUDA;
                      TRITON_INTERPRET=1 on CPU)
  triton_gemm         the same backend with PEDCC_TRITON_LOSS=gemm: library GEMMs over chunks of
                      classes, softmax in Triton between them
  triton_epilogue     PEDCC_TRITON_LOSS=epilogue: per chunk a Triton GEMM x W^T with the softmax in
                      its epilogue, then a library GEMM P W (the gemm strategy where it falls back)
  torch_linear_ce     torch.nn.functional.linear_cross_entropy on (s*x^, w^) (no margin, no MSE),
                      with its chunked path when torch has LinearCrossEntropyOptions
  liger_flce          Liger-Kernel's LigerFusedLinearCrossEntropyLoss on (s*x^, w^) (CUDA)
  pml_cosface         pytorch-metric-learning's CosFaceLoss(margin=m, scale=s) with W set to the centroids
For the two linear cross-entropy peers w^ is normalised once outside the timed call (fixed centroids);
it is an input, like W for the others.
"""
import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (Prepared, Run, Section, Unavailable, add_common_args, autotune_keys,  # noqa: E402
                     autotune_report, resolve_common)

IMPLS = ("reference", "reference_compiled", "torch", "triton", "triton_gemm", "triton_epilogue", "torch_linear_ce",
         "liger_flce", "pml_cosface")
SAME_MATH = ("reference", "reference_compiled", "torch", "triton", "triton_gemm", "triton_epilogue")
TRITON_STRATEGIES = {"triton": "sweep", "triton_gemm": "gemm", "triton_epilogue": "epilogue"}
SCALE, MARGIN = 15.0, 0.5  # the authors' defaults (DESIGN §2)
SECTION = Section(name="loss", title="PEDCC-Loss forward + backward", baseline="reference", x_key="C",
                  panel_keys=("N", "d", "dtype", "grad"), compare_keys=("N", "C", "d", "dtype", "grad"))


def cases_for(args, device):
    """The (params) of every case, in the order they run."""
    if args.dry_run:
        shapes = [(16, c, 16) for c in (24, 48)]
        dtypes = ["float32"]
    elif device == "cuda":
        shapes = [(n, c, 512) for c in (100000, 10000, 1000) for n in (1024, 4096)]
        dtypes = ["float32", "bfloat16"]
    else:
        shapes = [(512, c, 512) for c in (1000, 10000, 50000)]
        dtypes = ["float32"]
    if args.C:
        shapes = [(n, c, d) for n, d in sorted({(n, d) for n, _, d in shapes}) for c in args.C]
    if args.N:
        shapes = [(n, c, d) for c, d in sorted({(c, d) for _, c, d in shapes}, reverse=True) for n in args.N]
    grads = ["x", "x+w"] if args.with_dw else ["x"]
    impls = [i for i in IMPLS if not args.impls or i in args.impls]
    cases = [dict(impl=impl, N=n, C=c, d=d, dtype=dtype, grad=grad, device=device, s=SCALE, m=MARGIN,
                  seed=args.seed, compile=args.compile, same_math=impl in SAME_MATH)
             for (n, c, d) in shapes for dtype in dtypes for grad in grads for impl in impls]
    # The targets are set at the largest C against the reference: those cases run first, then the
    # peers at that C, then the rest, so that a spent time budget drops the least needed ones.
    largest = max(c for _, c, _ in shapes)
    return sorted(cases, key=lambda p: 2 if p["C"] != largest else (0 if p["same_math"] else 1))


def label(p):
    return f"N={p['N']} C={p['C']} d={p['d']} {p['dtype']} d{p['grad']} {p['impl']}"


def has_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def unavailable(p):
    """Why this case cannot run here, or None."""
    impl, device = p["impl"], p["device"]
    if impl == "reference_compiled" and device == "cpu" and not p["compile"]:
        return "torch.compile on a CPU is slow to compile and off by default; pass --compile"
    if impl in TRITON_STRATEGIES:
        if not has_module("triton"):
            return "triton is not installed"
        if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "the Triton backend needs CUDA (on a CPU only under TRITON_INTERPRET=1, not a timing)"
        if not has_module("pedcc_kernels.kernels.fused_loss"):
            return "pedcc_kernels.kernels.fused_loss is not in this build"
    if impl == "torch_linear_ce":
        import torch.nn.functional as F

        if not hasattr(F, "linear_cross_entropy"):
            import torch

            return f"torch {torch.__version__} has no F.linear_cross_entropy"
    if impl == "liger_flce":
        if not has_module("liger_kernel"):
            return "liger-kernel is not installed"
        if device != "cuda":
            return "Liger-Kernel's fused linear cross-entropy is Triton code for CUDA"
    if impl == "pml_cosface" and not has_module("pytorch_metric_learning"):
        return "pytorch-metric-learning is not installed"
    return None


def loss_function(p, W):
    """(f, held) for implementation p['impl']: f(x, y) -> scalar loss; held are the tensors besides x
    and W whose gradients f fills. W is (C, d), possibly requiring grad."""
    import torch
    import torch.nn.functional as F

    import pedcc_kernels as pk
    from pedcc_kernels.reference import normalize_rows, pedcc_loss_reference

    s, m, impl = p["s"], p["m"], p["impl"]
    if impl == "reference":
        return (lambda x, y: pedcc_loss_reference(x, y, W, s=s, m=m)), []
    if impl == "reference_compiled":
        torch._dynamo.reset()  # a fresh compile per shape: no recompile limit, no dynamic-shape guess
        compiled = torch.compile(pedcc_loss_reference, dynamic=False)
        return (lambda x, y: compiled(x, y, W, s=s, m=m)), []
    if impl == "torch":
        return (lambda x, y: pk.pedcc_loss(x, y, W, s=s, m=m, backend="torch", check_labels=False)), []
    if impl in TRITON_STRATEGIES:
        def triton_loss(x, y):
            previous = os.environ.get("PEDCC_TRITON_LOSS")
            os.environ["PEDCC_TRITON_LOSS"] = TRITON_STRATEGIES[impl]  # read when the op is chosen
            try:
                return pk.pedcc_loss(x, y, W, s=s, m=m, backend="triton", check_labels=False)
            finally:
                if previous is None:
                    del os.environ["PEDCC_TRITON_LOSS"]
                else:
                    os.environ["PEDCC_TRITON_LOSS"] = previous

        return triton_loss, []
    if impl in ("torch_linear_ce", "liger_flce"):
        fixed_w_hat = None if W.requires_grad else normalize_rows(W).detach()

        def w_hat():
            return fixed_w_hat if fixed_w_hat is not None else normalize_rows(W)

        if impl == "torch_linear_ce":
            options = torch.nn.LinearCrossEntropyOptions() if hasattr(torch.nn, "LinearCrossEntropyOptions") else None
            return (lambda x, y: F.linear_cross_entropy(s * normalize_rows(x), w_hat(), y, options=options)), []
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()

        def liger_loss(x, y):
            out = liger(w_hat(), s * normalize_rows(x), y)
            return getattr(out, "loss", out)

        return liger_loss, []
    if impl == "pml_cosface":
        from pytorch_metric_learning.losses import CosFaceLoss

        crit = CosFaceLoss(num_classes=W.shape[0], embedding_size=W.shape[1], margin=m, scale=s).to(W.device)
        with torch.no_grad():
            crit.W.data = W.detach().t().contiguous()
        crit.W.requires_grad_(W.requires_grad)
        return (lambda x, y: crit(x, y)), [crit.W]
    raise ValueError(f"unknown impl {impl!r}")


def make_case(p):
    """Inputs of one case and the timed call (forward + backward)."""
    import torch

    reason = unavailable(p)
    if reason:
        raise Unavailable(reason)
    device, dtype = torch.device(p["device"]), getattr(torch, p["dtype"])
    n, c, d = p["N"], p["C"], p["d"]
    gen = torch.Generator().manual_seed(p["seed"])
    x = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    y = torch.randint(0, c, (n,), generator=gen).to(device)
    w = torch.randn(c, d, generator=gen)
    W = (w / w.norm(dim=1, keepdim=True)).to(device=device, dtype=dtype)
    if p["grad"] == "x+w":
        W.requires_grad_(True)
    f, held = loss_function(p, W)
    grad_holders = [x, W, *held]

    def clear():
        for t in grad_holders:
            t.grad = None

    def run():
        clear()
        f(x, y).backward()
        clear()

    direction = torch.randn(n, d, generator=gen).to(device=device, dtype=torch.float32)
    direction /= direction.norm()  # unit: the harness measures grad_x_dot against grad_x_norm

    def check():
        clear()
        loss = f(x, y)
        loss.backward()
        gx = x.grad.float()
        values = {"loss": loss.item(), "grad_x_norm": gx.norm().item(), "grad_x_dot": (gx * direction).sum().item()}
        grad_w = next((t.grad for t in grad_holders[1:] if t.grad is not None), None)
        if grad_w is not None:
            values["grad_w_norm"] = grad_w.float().norm().item()
        clear()
        return values

    gemm_passes = 3 if p["grad"] == "x+w" else 2  # forward cos, dL/dx (and dL/dW): 2*N*C*d FLOP each
    input_bytes = sum(t.numel() * t.element_size() for t in (x, y, W))
    note = ""
    if p["impl"] == "torch_linear_ce":
        note = "chunked path" if hasattr(torch.nn, "LinearCrossEntropyOptions") else "reference path"
    details = None
    if p["impl"] == "triton":
        details = sweep_autotuning(d, dtype, p["grad"] == "x+w")
    elif p["impl"] == "triton_gemm":
        from pedcc_kernels.kernels.gemm_loss import chunk_classes

        classes = chunk_classes(n, c, dtype.itemsize)
        details = lambda: {"chunk_classes": classes}  # noqa: E731
    elif p["impl"] == "triton_epilogue":
        details = epilogue_details(n, c, dtype, p["s"], p["m"], p["grad"] == "x+w")
    return Prepared(run=run, input_bytes=input_bytes, flop=2.0 * gemm_passes * n * c * d, check=check, note=note,
                    details=details)


def epilogue_details(n, c, dtype, s, m, grad_w):
    """Which op the epilogue strategy ran ('epilogue', or 'gemm' where it does not apply), its
    chunk and the autotuner's choice for its GEMMs (the forward's, and dL/dW's with grad_w)."""
    from pedcc_kernels.kernels.epilogue_loss import MAX_CHUNK, applies, epilogue_kernel, grad_epilogue_kernel
    from pedcc_kernels.kernels.fused_loss_config import fp32_operands
    from pedcc_kernels.kernels.gemm_loss import chunk_classes

    if not applies(s, m, n, c, dtype):
        classes = chunk_classes(n, c, dtype.itemsize)
        return lambda: {"op": "gemm", "chunk_classes": classes}
    classes = min(chunk_classes(n, c, dtype.itemsize, dot_bytes=0), MAX_CHUNK)
    kernels = {"logits_epilogue": epilogue_kernel(fp32_operands(dtype))}
    if grad_w:
        kernels["grad_logits_epilogue"] = grad_epilogue_kernel(fp32_operands(dtype))
    known = {name: autotune_keys(kernel) for name, kernel in kernels.items()}
    return lambda: {"op": "epilogue", "chunk_classes": classes,
                    "autotuning": {name: autotune_report(kernel, known[name]) for name, kernel in kernels.items()}}


def sweep_autotuning(d, dtype, grad_w):
    """The autotuner's choice and per-config timings of the sweep kernels this case ran."""
    from pedcc_kernels.kernels.fused_loss_bwd import grad_centroids_sweep_kernel
    from pedcc_kernels.kernels.fused_loss_config import fp32_operands, padded_dim
    from pedcc_kernels.kernels.fused_loss_fwd import forward_sweep_kernel

    key = (padded_dim(d), fp32_operands(dtype))
    kernels = {"forward_sweep": forward_sweep_kernel(*key)}
    if grad_w:
        kernels["grad_centroids_sweep"] = grad_centroids_sweep_kernel(*key)
    known = {name: autotune_keys(kernel) for name, kernel in kernels.items()}

    def details():
        return {"autotuning": {name: autotune_report(kernel, known[name]) for name, kernel in kernels.items()}}

    return details


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--C", type=int, nargs="+", help="override the class counts")
    parser.add_argument("--N", type=int, nargs="+", help="override the batch sizes (rows)")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, help="only these implementations")
    parser.add_argument("--with-dw", action="store_true", help="also measure with dL/dW (fine-tuning)")
    parser.add_argument("--compile", action="store_true", help="include torch.compile of the reference on a CPU")
    parser.add_argument("--tf32", action="store_true", help="float32 matmuls of torch in TF32 (on a GPU; the "
                        "default is torch's 'highest'); recorded as machine.float32_matmul_precision")
    parser.add_argument("--gemm-chunk-mib", type=float, help="chunk budget of triton_gemm and triton_epilogue "
                        "in MiB (PEDCC_GEMM_CHUNK_MIB; default 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.gemm_chunk_mib is not None:
        os.environ["PEDCC_GEMM_CHUNK_MIB"] = str(args.gemm_chunk_mib)
    if args.tf32:
        import torch

        torch.set_float32_matmul_precision("high")
    if args.dry_run:
        # the fused kernel runs under the interpreter in a dry run; set before any kernel is defined
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device, out_dir, settings = resolve_common(args)
    run = Run(benchmark="loss", script=os.path.abspath(__file__), device=device, out_dir=out_dir,
              settings=settings, dry_run=args.dry_run, budget_s=args.budget_s, tag=args.tag,
              config={k: v for k, v in vars(args).items()})
    run.add_section(SECTION)
    run.measure("loss", cases_for(args, device), unavailable, label)
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
