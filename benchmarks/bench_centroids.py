"""Centroid generation: speed of one N-body force evaluation, and quality of the generated centroids.

    python benchmarks/bench_centroids.py                # CPU: forces at C in {1000, 2000, 5000}, d=512;
                                                        # quality at (1000, 64), (2000, 128), (10000, 512)
    python benchmarks/bench_centroids.py --device cuda  # GPU: forces at C in {10000, 50000, 100000}, d=512;
                                                        # quality at (100000, 512)
    python benchmarks/bench_centroids.py --dry-run      # tiny shapes on the CPU, seconds

Forces (section "force"): the compiled op pk.nbody_forces ('op', 'op_bf16', its bf16-operand
impl='tensor_core', and 'op_bf16x3', impl='bf16x3', on a CPU; 'simt' and 'tensor_core' on a GPU) against
pedcc_kernels.nbody.nbody_forces_torch, the same math as chunked torch matmuls (cuBLAS on a GPU),
which is the baseline of the ratios. Points are random unit vectors in float32.

Quality (section "quality"): max cosine, min distance and wall time of random unit vectors,
method="pedcc" (the authors' charge model, iterations capped: see PEDCC_ITERS) and
method="repulsion" (stops on its own criterion or at --repulsion-time-limit), against the bound of
centroid_stats.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (Prepared, Run, Section, Unavailable, add_common_args, autotune_keys,  # noqa: E402
                     autotune_report, resolve_common)

FORCE_IMPLS = {"cpu": ("op", "op_bf16", "op_bf16x3", "torch"), "cuda": ("simt", "tensor_core", "triton", "torch")}
# --optimiser-impl fastest: the quickest impl at the largest C whose check values stay this close to torch's
FASTEST_MAX_REL_DIFF = 2e-3  # bf16 (Triton) and tf32 (the first tensor_core) operands agreed to 1e-4 to 4e-4 on an H200
# Bench names of the op's impl argument ('op_bf16': the CPU's 'tensor_core', bf16 operands;
# 'op_bf16x3': split bf16 operands for the Gram product, the optimiser's end phase on CPU).
OP_IMPL = {"op": "auto", "op_bf16": "tensor_core", "op_bf16x3": "bf16x3"}
# repulsion before pedcc: if a step's time limit cuts the run short, the method with targets is measured
QUALITY_METHODS = ("random", "code", "repulsion", "pedcc")
# The authors' generator runs a fixed 200 iterations; where one iteration costs seconds (C=10000 on
# two CPU cores) fewer are run, and the cap is printed with the result.
PEDCC_ITERS = {(1000, 64): 200, (2000, 128): 200, (10000, 512): 30, (100000, 512): 50}
FORCE = Section(name="force", title="N-body force evaluation", baseline="torch", x_key="C",
                panel_keys=("d", "potential"), compare_keys=("C", "d", "potential", "param"))
QUALITY = Section(name="quality", title="Centroid quality", baseline=None, x_key="C", panel_keys=("d",),
                  compare_keys=("C", "d"))


def force_cases(args, device):
    if args.dry_run:
        sizes, dim = (40, 80), 16
    elif device == "cuda":
        sizes, dim = (10000, 50000, 100000), 512
    else:
        sizes, dim = (1000, 2000, 5000), 512
    sizes = args.C or sizes
    impls = [i for i in FORCE_IMPLS[device] if not args.impls or i in args.impls or i == "torch"]
    return [dict(impl=impl, C=c, d=dim, potential=args.potential, param=args.param, chunk=args.chunk,
                 device=device, seed=args.seed, same_math=True)
            for c in sizes for impl in impls]


def quality_cases(args, device):
    if args.dry_run:
        shapes = [(50, 8)]
    elif args.quality:
        shapes = [tuple(int(v) for v in q.split(":")) for q in args.quality]
    elif device == "cuda":
        shapes = [(100000, 512)]
    else:
        shapes = [(1000, 64), (2000, 128), (10000, 512)]
    cases = []
    methods = [m for m in QUALITY_METHODS if not args.methods or m in args.methods]
    for c, d in shapes:
        for method in methods:
            if method == "pedcc":
                cap = args.pedcc_iters or (10 if args.dry_run else PEDCC_ITERS.get((c, d), 200))
            elif method == "repulsion":
                cap = args.repulsion_iters or (10 if args.dry_run else None)
            else:
                cap = None
            limit = args.repulsion_time_limit if method == "repulsion" else None
            impl = args.optimiser_impl if method in ("repulsion", "pedcc") else None
            cases.append(dict(method=method, C=c, d=d, device=device, seed=args.seed, max_iters=cap,
                              time_limit=limit, impl=impl))
    return cases


def force_label(p):
    return f"C={p['C']} d={p['d']} {p['potential']} {p['impl']}"


def quality_label(p):
    return f"C={p['C']} d={p['d']} {p['method']}"


def force_unavailable(p):
    from pedcc_kernels import _ext
    from pedcc_kernels.kernels import triton_usable

    if p["impl"] == "torch":
        return None
    if p["impl"] == "triton":
        return None if triton_usable(p["device"]) else "triton is not installed, or no CUDA device"
    if not _ext.available():
        return f"pedcc_kernels._C is not built ({_ext.LOAD_ERROR})"
    if p["device"] == "cuda" and not _ext.has_cuda_kernels():
        return "pedcc_kernels._C was built without its CUDA kernels"
    return None


def quality_unavailable(p):
    from pedcc_kernels.binary_codes import code_capacity

    if p["method"] == "code" and p["C"] > code_capacity(p["d"]):
        return f"the binary code holds {code_capacity(p['d'])} classes in d={p['d']}"
    return None


def make_case(p):
    """One force evaluation on random unit points (the timed call)."""
    import pedcc_kernels as pk
    from pedcc_kernels import nbody

    reason = force_unavailable(p)
    if reason:
        raise Unavailable(reason)
    points = pk.generate_centroids(p["C"], p["d"], method="random", seed=p["seed"], device=p["device"])
    if p["impl"] == "torch":
        def evaluate():
            return nbody.nbody_forces_torch(points, p["potential"], p["param"], p["chunk"])
    else:
        impl = OP_IMPL.get(p["impl"], p["impl"])

        def evaluate():
            return pk.nbody_forces(points, p["potential"], p["param"], impl=impl)

    def run():
        evaluate()

    def check():
        forces, max_cos, energy = evaluate()
        return {"force_norm": forces.double().norm().item(), "max_cos": max_cos.max().item(),
                "energy": energy.double().sum().item()}

    return Prepared(run=run, input_bytes=points.numel() * points.element_size(),
                    flop=4.0 * p["C"] ** 2 * p["d"], check=check, details=triton_details(p))


def triton_details(p):
    """For the Triton kernel, a function reporting its autotuner's choice after the run; else None."""
    if p["impl"] != "triton":
        return None
    from pedcc_kernels.kernels.fused_loss_config import padded_dim
    from pedcc_kernels.kernels.nbody_sweep import nbody_sweep_kernel

    sweep = nbody_sweep_kernel(padded_dim(p["d"]))
    known = autotune_keys(sweep)

    def details():
        return {"autotuning": {"nbody_sweep": autotune_report(sweep, known)}}

    return details


def generate(p):
    """(C, d) centroids of one method, the wall time it took and what the optimiser reports.

    The iterative methods run as generate_centroids runs them (the same seeded random start, then
    centroids.run_optimiser), in two calls so that the record holds the optimiser's iterations, stop
    reason, engine and the largest cosine along the way."""
    import torch

    import pedcc_kernels as pk
    from pedcc_kernels.centroids import run_optimiser

    sync = torch.cuda.synchronize if p["device"] == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    direct = p["method"] if p["method"] in ("random", "code") else "random"  # the optimisers start random
    points = pk.generate_centroids(p["C"], p["d"], method=direct, seed=p["seed"], device=p["device"])
    report = {}
    if p["method"] in ("repulsion", "pedcc"):
        result = run_optimiser(p["method"], points, max_iters=p["max_iters"], time_limit=p.get("time_limit"),
                               impl=p.get("impl"))
        points = result.points
        report = {"iterations": result.iterations, "stop_reason": result.stop_reason, "engine": result.engine,
                  "trajectory": thinned_history(result.history, result.seconds, times=result.times)}
    sync()
    return points, time.perf_counter() - start, report


def thinned_history(history, seconds, keep=40, times=None):
    """[(iteration, seconds at that iteration, largest cosine), ...]: about `keep` points of the
    optimiser's history, the last one included. Seconds come from `times` (one per history entry)
    when the optimiser recorded them, else assume a constant time per iteration."""
    if not history:
        return []
    stride = max(1, len(history) // keep)
    picks = sorted(set(range(0, len(history), stride)) | {len(history) - 1})
    if times is None or len(times) != len(history):
        times = [(i + 1) * seconds / len(history) for i in range(len(history))]
    return [(i + 1, round(times[i], 2), round(history[i], 5)) for i in picks]


def measure_quality(p):
    import pedcc_kernels as pk

    points, seconds, report = generate(p)
    stats = pk.centroid_stats(points)
    return {"time_s": seconds, "max_cos": stats["max_cos"], "min_dist": stats["min_dist"],
            "mean_cos": stats["mean_cos"], "bound": stats["bound"], "gap_to_bound": stats["max_cos"] - stats["bound"],
            **report}


def fastest_validated_impl(records, among=None):
    """The force impl (op impl name) with the shortest time at the largest C measured, among those whose
    check values agree with torch's within FASTEST_MAX_REL_DIFF (and, if `among` is given, whose bench
    name is in it); None when none qualifies."""
    ok = [r for r in records if r["section"] == "force" and r["status"] == "ok" and r["impl"] != "torch"
          and (among is None or r["impl"] in among)
          and r.get("check_rel_diff") is not None and r["check_rel_diff"] < FASTEST_MAX_REL_DIFF]
    if not ok:
        return None
    largest = max(r["C"] for r in ok)
    best = min((r for r in ok if r["C"] == largest), key=lambda r: r["time_ms"])
    return OP_IMPL.get(best["impl"], best["impl"])


def main(argv=None):
    from pedcc_kernels.nbody import IMPLS, POTENTIALS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--C", type=int, nargs="+", help="override the force benchmark's point counts")
    parser.add_argument("--impls", nargs="+", choices=sorted({i for v in FORCE_IMPLS.values() for i in v}),
                        help="only these force implementations (torch, the baseline, always runs)")
    parser.add_argument("--potential", default="coulomb", choices=[q for q in POTENTIALS if q != "hinge"])
    parser.add_argument("--param", type=float, default=1.0, help="Riesz exponent or lse temperature")
    parser.add_argument("--chunk", type=int, default=None,
                        help="rows per chunk of the torch version (default: its own, a block near 32 MB)")
    parser.add_argument("--quality", nargs="+", metavar="C:d", help="override the quality shapes")
    parser.add_argument("--methods", nargs="+", choices=QUALITY_METHODS, help="only these quality methods")
    parser.add_argument("--pedcc-iters", type=int, default=None, help="iteration cap of method='pedcc'")
    parser.add_argument("--repulsion-iters", type=int, default=None, help="iteration cap of method='repulsion'")
    parser.add_argument("--repulsion-time-limit", type=float, default=None,
                        help="seconds after which method='repulsion' returns its best so far")
    parser.add_argument("--optimiser-impl", choices=(*IMPLS, "fastest"),
                        default=None, help="force op implementation of repulsion and pedcc (default: the device's "
                        "own; fastest: the quickest of the force section that agrees with torch)")
    parser.add_argument("--fastest-among", nargs="+", default=None, choices=FORCE_IMPLS["cuda"][:-1],
                        help="with --optimiser-impl fastest: only these force implementations qualify (the ones "
                        "whose tests passed, say); if none does, the first of them")
    parser.add_argument("--skip", choices=("force", "quality"), action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device, out_dir, settings = resolve_common(args)
    if device == "cuda" and args.warmup is None:
        settings.warmup = 2  # nothing to compile or autotune: one call after the first is enough
    if device == "cuda" and args.repeats is None:
        settings.min_repeats = 3  # a call at C=100000 takes up to a second
    run = Run(benchmark="centroids", script=os.path.abspath(__file__), device=device, out_dir=out_dir,
              settings=settings, dry_run=args.dry_run, budget_s=args.budget_s, tag=args.tag,
              config={k: v for k, v in vars(args).items()})
    run.add_section(FORCE)
    run.add_section(QUALITY)
    if "force" not in args.skip:
        run.measure("force", force_cases(args, device), force_unavailable, force_label)
    if args.optimiser_impl == "fastest":
        args.optimiser_impl = fastest_validated_impl(run.records, args.fastest_among)
        if args.optimiser_impl is None and args.fastest_among:
            args.optimiser_impl = args.fastest_among[0]  # not the device default, which may have failed
        print(f"optimiser impl: {args.optimiser_impl or 'the device default'} (fastest validated force impl)")
    if "quality" not in args.skip:
        run.measure("quality", quality_cases(args, device), quality_unavailable, quality_label,
                    runner=measure_quality)
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
