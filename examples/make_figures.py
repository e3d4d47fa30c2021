"""The seed paper's pictures, regenerated from this package:

  Figure 2 (fig2_digits_features.png): test-set features of the digits CNN trained with a 2-D and a
    3-D embedding under cross-entropy, AM-Softmax and PEDCC-Loss. Top row: the 2-D features as the
    network outputs them, with the class directions (classifier rows or centroids) as lines. Bottom
    row: the 3-D features projected onto the unit sphere, the class directions as black stars.
  Figure 3 (fig3_centroids.png): generated centroids for 4 and 20 classes in 3-D, on the sphere.

    python examples/make_figures.py              # both figures into examples/results
    python examples/make_figures.py --only fig3
"""
import argparse
import json
import sys
import time
from pathlib import Path

# The examples folder (for common.py) and the checkout's root (so a source checkout runs as is).
EXAMPLES = Path(__file__).resolve().parent
sys.path[:0] = [str(EXAMPLES), str(EXAMPLES.parent)]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import pedcc_kernels as pk  # noqa: E402
from common import (add_run_args, DigitsNet, command_line, evaluate,  # noqa: E402
                    load_digits_split, make_deterministic, make_head, train, write_json)

HEADS = {"ce": "Softmax Loss", "am": "AM-Softmax Loss", "pedcc": "PEDCC-Loss"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("all", "fig2", "fig3"), default="all", help="which figure (default all)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs per model (default 30)")
    p.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate, cosine-decayed (default 0.05)")
    p.add_argument("--s", type=float, default=15.0, help="scale of AM-Softmax and PEDCC-Loss (default 15)")
    p.add_argument("--m", type=float, default=0.5, help="margin of AM-Softmax and PEDCC-Loss (default 0.5)")
    p.add_argument("--classes", type=int, default=10, help="digits 0..CLASSES-1 for Figure 2 (default 10)")
    p.add_argument("--centroid-counts", default="4,20",
                   help="class counts of Figure 3, comma-separated (default 4,20)")
    p.add_argument("--seed", type=int, default=0, help="seed of every model and of the centroids (default 0)")
    add_run_args(p)
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    try:
        args.centroid_counts = [int(c) for c in args.centroid_counts.split(",") if c.strip()]
    except ValueError:
        p.error(f"--centroid-counts must be comma-separated integers, got {args.centroid_counts!r}")
    if not args.centroid_counts or min(args.centroid_counts) < 1:
        p.error("--centroid-counts needs at least one count, each >= 1")
    return args


def train_feature_models(args):
    """For d in (2, 3) and each head: train, then return test features, labels, directions, stats."""
    train_x, train_y, test_x, test_y = load_digits_split(classes=args.classes)
    models = {}
    for dim in (2, 3):
        for kind in HEADS:
            make_deterministic(args.seed, args.threads)
            model = DigitsNet(dim)
            head = make_head(kind, args.classes, dim, s=args.s, m=args.m, centroid_seed=args.seed)
            history = train(model, head, train_x, train_y, epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed, desc=f"{kind} d={dim}",
                            progress=not args.no_progress)
            accuracy, features = evaluate(model, head, test_x, test_y)
            print(f"Figure 2: {HEADS[kind]:16s} d={dim}: test accuracy {accuracy * 100:6.2f}%", flush=True)
            models[(dim, kind)] = {"features": features.numpy(), "labels": test_y.numpy(),
                                   "directions": head.class_directions().numpy(), "accuracy": accuracy,
                                   "step_losses": history["step_losses"],
                                   "epoch_losses": history["epoch_losses"]}
    return models


def sphere_wireframe(ax):
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.8", linewidth=0.4)
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()


def class_colors(count):
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def plot_figure2(models, classes, path):
    colors = class_colors(classes)
    fig = plt.figure(figsize=(15, 10))
    for col, kind in enumerate(HEADS):
        flat = models[(2, kind)]
        ax = fig.add_subplot(2, 3, col + 1)
        for c in range(classes):
            pts = flat["features"][flat["labels"] == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=6, color=colors[c], label=str(c))
        reach = np.abs(flat["features"]).max() * 1.05
        for c, w in enumerate(flat["directions"]):
            direction = w / max(np.linalg.norm(w), 1e-12)
            ax.plot([0, reach * direction[0]], [0, reach * direction[1]], color=colors[c], linewidth=1)
        ax.set_aspect("equal")
        ax.set_title(f"{HEADS[kind]}, 2-D features (test acc {flat['accuracy'] * 100:.1f}%)")
        if col == 0:
            ax.legend(markerscale=2, fontsize=7, ncol=2, loc="upper left")

        solid = models[(3, kind)]
        ax = fig.add_subplot(2, 3, col + 4, projection="3d")
        sphere_wireframe(ax)
        on_sphere = solid["features"] / np.linalg.norm(solid["features"], axis=1, keepdims=True).clip(1e-12)
        for c in range(classes):
            pts = on_sphere[solid["labels"] == c]
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=5, color=colors[c])
        marks = solid["directions"] / np.linalg.norm(solid["directions"], axis=1, keepdims=True).clip(1e-12)
        ax.scatter(marks[:, 0], marks[:, 1], marks[:, 2], s=120, marker="*", color="black", depthshade=False)
        ax.set_title(f"{HEADS[kind]}, 3-D features on the sphere (test acc {solid['accuracy'] * 100:.1f}%)",
                     fontsize=10)
    fig.suptitle(f"Digits test-set features ({classes} classes); lines and stars: class directions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_figure3(centroid_sets, path):
    fig = plt.figure(figsize=(11, 5.5))
    for i, (count, (points, stats)) in enumerate(centroid_sets.items()):
        ax = fig.add_subplot(1, len(centroid_sets), i + 1, projection="3d")
        sphere_wireframe(ax)
        ax.scatter(points[:, 0], points[:, 1], points[:, 2], s=60, color=class_colors(count))
        ax.set_title(f"{count} classes in 3-D: max cos {stats['max_cos']:.3f}, "
                     f"min distance {stats['min_dist']:.3f}", fontsize=10)
    fig.suptitle("Pre-defined evenly-distributed class centroids (pedcc_kernels.generate_centroids)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    """Regenerates the figures; returns the summary, which is merged into figures.json (one entry
    per figure, each with the command that made it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    command = command_line(__file__, argv)
    summary = {}
    if args.only in ("all", "fig2"):
        started = time.perf_counter()
        models = train_feature_models(args)
        path = args.out / "fig2_digits_features.png"
        plot_figure2(models, args.classes, path)
        summary["fig2"] = {
            "file": path.name, "command": command, "classes": args.classes, "epochs": args.epochs,
            "models": {f"{kind}_d{dim}": {"accuracy": v["accuracy"], "epoch_losses": v["epoch_losses"],
                                          "step_losses": v["step_losses"]}
                       for (dim, kind), v in models.items()},
            "elapsed_s": time.perf_counter() - started,
        }
    if args.only in ("all", "fig3"):
        centroid_sets = {}
        for count in args.centroid_counts:
            points = F.normalize(pk.generate_centroids(count, 3, seed=args.seed).double(), dim=1)
            centroid_sets[count] = (points.numpy(), pk.centroid_stats(points))
            print(f"Figure 3: {count} centroids in 3-D: {centroid_sets[count][1]}", flush=True)
        path = args.out / "fig3_centroids.png"
        plot_figure3(centroid_sets, path)
        summary["fig3"] = {"file": path.name, "command": command,
                           "centroids": {str(c): stats for c, (_, stats) in centroid_sets.items()}}
    record = args.out / "figures.json"
    merged = json.loads(record.read_text()) if record.exists() else {}
    merged.update(summary)
    write_json(record, merged)
    print("wrote", ", ".join(str(args.out / v["file"]) for v in summary.values()))
    return summary


if __name__ == "__main__":
    main()
