"""Console commands of pedcc_kernels."""
import argparse
import sys
import time


def demo_main(argv=None):
    """`pedcc-demo`: generate centroids, train on the digits, compare the torch backend with the reference."""
    from .demo import main

    main(argv)


def centroids_parser():
    from .centroids import METHODS
    from .nbody import IMPLS

    parser = argparse.ArgumentParser(
        prog="pedcc-centroids",
        description="Generate C evenly spread unit centroids in R^d and save them with their quality "
                    "statistics (largest pairwise cosine against the best known lower bound).")
    parser.add_argument("--classes", "-C", type=int, required=True, help="number of centroids C")
    parser.add_argument("--dim", "-d", type=int, required=True, help="dimension d")
    parser.add_argument("--output", "-o", required=True,
                        help="output file: .pt, .npy (metadata in FILE.npy.json) or .safetensors")
    parser.add_argument("--method", default="auto", choices=METHODS,
                        help="auto: simplex (C <= d+1), orthoplex (C <= 2d), beyond that the binary code for "
                             "C > 20000 where it fits (dim >= 511), else repulsion (default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--max-iters", type=int, default=None,
                        help="cap on iterations of repulsion (default 3000) and pedcc (default 200)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds after which repulsion returns its best so far (default: until it converges)")
    parser.add_argument("--impl", default=None, choices=IMPLS,
                        help="force op implementation of the iterative methods (default: the device's own)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def centroids_main(argv=None):
    """`pedcc-centroids --classes C --dim d -o FILE`: generate, report quality, save. Returns the exit code."""
    import torch

    from .centroid_files import check_path, save_centroids
    from .centroids import centroid_stats, generate_centroids, resolve_method

    parser = centroids_parser()
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    method = resolve_method(args.method, args.classes, args.dim)
    start = time.perf_counter()
    try:
        check_path(args.output)
        points = generate_centroids(args.classes, args.dim, method=args.method, seed=args.seed, device=device,
                                    max_iters=args.max_iters, time_limit=args.time_limit, impl=args.impl,
                                    progress=not args.no_progress)
        seconds = time.perf_counter() - start
        stats = centroid_stats(points)
        save_centroids(args.output, points, method=method, seed=args.seed, seconds=round(seconds, 3),
                       stats=stats)
    except (TypeError, ValueError, RuntimeError, OSError) as exc:
        parser.exit(2, f"pedcc-centroids: error: {exc}\n")
    gap = stats["max_cos"] - stats["bound"]
    print(f"{args.classes} centroids in R^{args.dim} by {method} on {device}: {seconds:.1f} s\n"
          f"  max cosine {stats['max_cos']:.5f}   (best known lower bound {stats['bound']:.5f}, gap {gap:.5f})\n"
          f"  min distance {stats['min_dist']:.5f}   mean cosine {stats['mean_cos']:.6f}\n"
          f"  saved to {args.output}", file=sys.stdout)
    return 0
