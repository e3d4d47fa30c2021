"""Training at many classes: a small MLP on synthetic clustered data (one Gaussian cluster per class)
with PEDCC-Loss on generated centroids, once with the fused loss (pedcc_loss backend 'auto': Triton on
a GPU, the chunked torch code on CPU) and once with the unfused reference, which builds the N x C
logits. Prints and writes (many_classes.md / .json in --out) throughput and memory per step.

Each backend runs in its own child process, so peak memory is its own: on a GPU
torch.cuda.max_memory_allocated over the timed steps; on CPU the peak resident set size of the child.

    python examples/train_many_classes.py            # 20,000 classes on a GPU; reduced on CPU
    python examples/train_many_classes.py --classes 20000 --batch-size 1024 --steps 200
"""
import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The examples folder (for common.py) and the checkout's root (so a source checkout runs as is).
EXAMPLES = Path(__file__).resolve().parent
sys.path[:0] = [str(EXAMPLES), str(EXAMPLES.parent)]

import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

import pedcc_kernels as pk  # noqa: E402
from pedcc_kernels._memory import current_rss_bytes, peak_rss_bytes  # noqa: E402
from common import add_run_args, record_run, run_config, write_json  # noqa: E402

BACKENDS = ("auto", "torch", "triton", "reference")
LABELS = {"auto": "fused (auto)", "torch": "fused (torch, chunked)", "triton": "fused (triton)",
          "reference": "unfused (reference)"}
# Full size on a GPU; on CPU a size that runs in a couple of minutes.
DEFAULTS = {"cuda": dict(classes=20000, batch_size=1024, steps=200),
            "cpu": dict(classes=4096, batch_size=512, steps=60)}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default 20000 GPU, 4096 CPU)")
    p.add_argument("--dim", type=int, default=128, help="embedding size d of features and centroids (default 128)")
    p.add_argument("--input-dim", type=int, default=128, help="dimension of the synthetic data (default 128)")
    p.add_argument("--hidden", type=int, default=512, help="hidden width of the MLP (default 512)")
    p.add_argument("--noise", type=float, default=1.0, help="cluster spread; class means are N(0, I) (default 1)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per step (default 1024 GPU, 512 CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 200 GPU, 60 CPU)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    p.add_argument("--s", type=float, default=15.0, help="scale s of PEDCC-Loss (default 15)")
    p.add_argument("--m", type=float, default=0.5, help="margin m of PEDCC-Loss (default 0.5)")
    p.add_argument("--backends", default="auto,reference",
                   help=f"comma-separated, from {', '.join(BACKENDS)} (default auto,reference)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, model and centroids (default 0)")
    add_run_args(p)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--centroids-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device not in DEFAULTS:
        p.error(f"--device must be cuda or cpu, got {args.device!r}")
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or any(b not in BACKENDS for b in args.backends):
        p.error(f"--backends must name some of {BACKENDS}, got {args.backends}")
    for name in ("classes", "dim", "input_dim", "hidden", "batch_size", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


class ClusteredData:
    """Class c draws x = mean_c + noise * N(0, I); batches come from a seeded generator, so every
    backend sees the same stream."""

    def __init__(self, classes, input_dim, noise, seed, device):
        gen = torch.Generator(device=device).manual_seed(seed)
        self.means = torch.randn(classes, input_dim, generator=gen, device=device)
        self.noise, self.device = noise, device
        self.gen = torch.Generator(device=device).manual_seed(seed + 1)

    def batch(self, size):
        labels = torch.randint(0, self.means.shape[0], (size,), generator=self.gen, device=self.device)
        noise = torch.randn(size, self.means.shape[1], generator=self.gen, device=self.device)
        return self.means[labels] + self.noise * noise, labels


def make_mlp(input_dim, hidden, dim):
    """Ends in BatchNorm1d(affine=False), as the PEDCC-Loss authors' networks do."""
    return nn.Sequential(nn.Linear(input_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, dim, bias=False), nn.BatchNorm1d(dim, affine=False))


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def accuracy(model, criterion, data, rows=4096, chunk=1024):
    """Nearest-centroid accuracy on fresh rows, in row chunks so no large N x C block exists."""
    model.eval()
    correct = 0
    for _ in range(0, rows, chunk):
        x, y = data.batch(chunk)
        correct += (criterion.predict(model(x)) == y).sum().item()
    model.train()
    return correct / (math.ceil(rows / chunk) * chunk)


def run_backend(backend, centroids, args):
    """Train with one loss backend in this process; returns throughput, memory and losses."""
    device = torch.device(args.device)
    # Seeded but not forced deterministic: this is a throughput run, and deterministic mode would make
    # cuBLAS refuse to run without CUBLAS_WORKSPACE_CONFIG.
    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data = ClusteredData(args.classes, args.input_dim, args.noise, args.seed, device)
    model = make_mlp(args.input_dim, args.hidden, args.dim).to(device)
    criterion = pk.PEDCCLoss(args.classes, args.dim, centroids=centroids.to(device), s=args.s, m=args.m,
                             backend=backend, check_labels=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    losses = []

    def step():
        x, y = data.batch(args.batch_size)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    initial_accuracy = accuracy(model, criterion, data)
    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = current_rss_bytes()
    started = time.perf_counter()
    for _ in tqdm(range(args.steps), desc=LABELS[backend], leave=False, disable=args.no_progress):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    return {
        "backend": backend,
        "label": LABELS[backend],
        "samples_per_s": args.steps * args.batch_size / elapsed,
        "ms_per_step": 1e3 * elapsed / args.steps,
        "memory_kind": "max_memory_allocated" if device.type == "cuda" else "peak RSS",
        "peak_memory_mib": peak / 2**20,
        "step_memory_mib": (peak - base) / 2**20,
        "losses": [v.item() for v in losses],
        "accuracy_before": initial_accuracy,
        "accuracy_after": accuracy(model, criterion, data),
    }


def run_in_child(backend, centroids_path, argv):
    """Runs this script as a worker for one backend, so its peak memory is measured alone."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, __file__, *argv, "--backends", backend,
                   "--worker", str(result_path), "--centroids-file", str(centroids_path)]
        subprocess.run(command, check=True)
        return json.loads(result_path.read_text())


def markdown_table(rows, command, config):
    lines = [
        f"# Training at {config['classes']:,} classes ({config['device_name']})",
        "",
        f"MLP {config['input_dim']} -> {config['hidden']} -> {config['dim']} on synthetic clustered data, "
        f"batch {config['batch_size']}, {config['steps']} timed steps after {config['warmup']} warm-up "
        f"steps, {config['threads']} CPU thread(s). Memory: {rows[0]['memory_kind']}; 'per step' is the "
        "peak over the timed steps minus the memory held before them.",
        "",
        f"Command: `{command}`",
        "",
        "| Loss | Samples/s | ms/step | Peak memory (MiB) | Per step (MiB) | Loss first -> last "
        "| Accuracy before -> after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['samples_per_s']:,.0f} | {r['ms_per_step']:.1f} | "
                     f"{r['peak_memory_mib']:,.0f} | {r['step_memory_mib']:,.1f} | "
                     f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} | "
                     f"{r['accuracy_before'] * 100:.2f}% -> {r['accuracy_after'] * 100:.2f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Runs every requested backend; returns the result dict also written to many_classes.json."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker is not None:
        centroids = torch.load(args.centroids_file)
        write_json(args.worker, run_backend(args.backends[0], centroids, args))
        return None
    started = time.perf_counter()
    centroids = pk.generate_centroids(args.classes, args.dim, seed=args.seed, device=args.device,
                                      progress=not args.no_progress)
    stats = pk.centroid_stats(centroids)
    print(f"{args.classes} centroids in {args.dim}-d: max cos {stats['max_cos']:.4f} "
          f"(bound {stats['bound']:.4f}), generated in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        centroids_path = Path(tmp) / "centroids.pt"
        torch.save(centroids.cpu(), centroids_path)
        for backend in args.backends:
            row = run_in_child(backend, centroids_path, argv)
            print(f"{row['label']:24s} {row['samples_per_s']:12,.0f} samples/s  {row['ms_per_step']:8.1f} ms/step  "
                  f"{row['memory_kind']} {row['peak_memory_mib']:,.0f} MiB (+{row['step_memory_mib']:,.1f} MiB "
                  f"per step)  loss {row['losses'][0]:.3f} -> {row['losses'][-1]:.3f}", flush=True)
            rows.append(row)
    config = run_config(args, skip=("worker", "centroids_file"))
    config["device_name"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return record_run(args.out, "many_classes", __file__, argv, config, rows, started, markdown_table,
                      centroid_stats=stats)


if __name__ == "__main__":
    main()
