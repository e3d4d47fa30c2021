"""Seed-style comparison on scikit-learn's 8x8 handwritten digits (no download): one small CNN trained
with cross-entropy, AM-Softmax, PEDCC-Loss (n = 1, 2, 3) and PEDCC-Loss with the seed's centroid
fine-tuning phase, over several seeds on a fixed split. Writes the test-accuracy table (mean ± std over
seeds) as markdown and JSON to --out and prints it.

    python examples/train_digits.py                 # the full table (a few minutes on 2 CPU cores)
    python examples/train_digits.py --epochs 2 --seeds 1
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

# The examples folder (for common.py) and the checkout's root (so a source checkout runs as is).
EXAMPLES = Path(__file__).resolve().parent
sys.path[:0] = [str(EXAMPLES), str(EXAMPLES.parent)]

from common import (add_run_args, DigitsNet, evaluate,  # noqa: E402
                    load_digits_split, make_deterministic, make_head, record_run, run_config, train)

# key -> (row label in the table, head kind, n, fine-tune)
METHODS = {
    "ce": ("Softmax Loss (cross-entropy)", "ce", None, False),
    "am": ("AM-Softmax Loss", "am", None, False),
    "pedcc_n1": ("PEDCC-Loss (n=1)", "pedcc", 1.0, False),
    "pedcc_n2": ("PEDCC-Loss (n=2)", "pedcc", 2.0, False),
    "pedcc_n3": ("PEDCC-Loss (n=3)", "pedcc", 3.0, False),
    "pedcc_n1_ft": ("PEDCC-Loss (n=1) + centroid fine-tuning", "pedcc", 1.0, True),
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {', '.join(METHODS)} (default: all)")
    p.add_argument("--seeds", type=int, default=10, help="runs per method, seeds 0..SEEDS-1 (default 10)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate, cosine-decayed (default 0.05)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default 5e-4)")
    p.add_argument("--embedding-size", type=int, default=64, help="feature dimension d (default 64)")
    p.add_argument("--s", type=float, default=15.0, help="scale of AM-Softmax and PEDCC-Loss (default 15)")
    p.add_argument("--m", type=float, default=0.5, help="margin of AM-Softmax and PEDCC-Loss (default 0.5)")
    p.add_argument("--finetune-epoch", type=int, default=None,
                   help="epoch at which the centroids become trainable (default: 2/3 of --epochs)")
    p.add_argument("--finetune-lr", type=float, default=1e-3,
                   help="learning rate of the centroids while fine-tuning (default 1e-3)")
    p.add_argument("--test-size", type=float, default=0.5, help="test fraction of the fixed split (default 0.5)")
    p.add_argument("--classes", type=int, default=10, help="use digits 0..CLASSES-1 (default 10)")
    add_run_args(p)
    args = p.parse_args(argv)
    args.methods = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = [k for k in args.methods if k not in METHODS]
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be >= 1")
    if args.finetune_epoch is None:
        args.finetune_epoch = (2 * args.epochs) // 3
    if not 0 <= args.finetune_epoch < args.epochs:
        p.error(f"--finetune-epoch must be in [0, {args.epochs}), got {args.finetune_epoch}")
    return args


def run_one(key, seed, data, args):
    """Train one method with one seed; returns (test accuracy, training history)."""
    _, kind, n, finetune = METHODS[key]
    train_x, train_y, test_x, test_y = data
    make_deterministic(seed, args.threads)
    model = DigitsNet(args.embedding_size)
    head = make_head(kind, args.classes, args.embedding_size, s=args.s, m=args.m, n=n or 1.0,
                     centroid_seed=seed)
    history = train(model, head, train_x, train_y, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, weight_decay=args.weight_decay,
                    finetune_epoch=args.finetune_epoch if finetune else None,
                    finetune_lr=args.finetune_lr, seed=seed, desc=f"{key} seed {seed}",
                    progress=not args.no_progress)
    accuracy, _ = evaluate(model, head, test_x, test_y)
    return accuracy, history


def markdown_table(rows, command, config):
    lines = [
        "# Test accuracy on scikit-learn digits (8x8, 10 classes)",
        "",
        f"Mean ± sample standard deviation over {config['seeds']} seeds; fixed stratified split "
        f"({config['train_images']} train / {config['test_images']} test images); "
        f"{config['epochs']} epochs, embedding size {config['embedding_size']}, s={config['s']}, "
        f"m={config['m']}. CPU, deterministic.",
        "",
        f"Command: `{command}`",
        "",
        "| Loss | Accuracy (%) |",
        "|---|---|",
    ]
    lines += [f"| {r['label']} | {r['mean'] * 100:.2f} ± {r['std'] * 100:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Runs the comparison; returns the result dict that is also written to digits_accuracy.json."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    data = load_digits_split(test_size=args.test_size, classes=args.classes)
    started = time.perf_counter()
    rows = []
    for key in args.methods:
        accuracies, histories = [], []
        for seed in range(args.seeds):
            accuracy, history = run_one(key, seed, data, args)
            accuracies.append(accuracy)
            histories.append(history["epoch_losses"])
            first, last = history["step_losses"][0], history["step_losses"][-1]
            print(f"{key:12s} seed {seed}: test accuracy {accuracy * 100:6.2f}%  "
                  f"loss {first:.4f} -> {last:.4f}", flush=True)
        rows.append({
            "method": key,
            "label": METHODS[key][0],
            "accuracies": accuracies,
            "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "epoch_losses": histories,
        })
    config = run_config(args)
    config.update(train_images=len(data[0]), test_images=len(data[2]))
    return record_run(args.out, "digits_accuracy", __file__, argv, config, rows, started, markdown_table)


if __name__ == "__main__":
    main()
