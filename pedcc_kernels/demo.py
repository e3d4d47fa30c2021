"""The two-minute tour: centroids, a classifier trained with PEDCCLoss on real data, and the torch
backend against the unfused reference. Run with `pedcc-demo` or `python -m pedcc_kernels.demo`."""
import argparse
import statistics
import time

import torch
from torch import nn

import pedcc_kernels as pk


def load_digits_split(seed=0):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), a fixed 75/25 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.75 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def train_digits(epochs=40, embedding=32, seed=0):
    """Train an MLP embedding + BatchNorm1d(affine=False) (the authors' head) with PEDCCLoss."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, embedding),
                          nn.BatchNorm1d(embedding, affine=False))
    crit = pk.PEDCCLoss(10, embedding, s=15.0, m=0.5, n=1.0, lam=1.0, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y_train)).split(64):
            loss = crit(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (crit.predict(model(x_test)) == y_test).float().mean().item()
    return {"epochs": epochs, "seconds": time.perf_counter() - start, "last_loss": loss.item(),
            "test_accuracy": accuracy, "centroids": pk.centroid_stats(crit.centroids)}


def _loss_inputs(rows, classes, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=gen).requires_grad_(True)
    w = torch.randn(classes, dim, generator=gen)
    y = torch.randint(0, classes, (rows,), generator=gen)
    return x, y, w


def _forward_backward(x, y, w, backend):
    x.grad = None
    pk.pedcc_loss(x, y, w, backend=backend).backward()


def _inputs_for(backend, rows, classes, dim):
    return (*_loss_inputs(rows, classes, dim), backend)


def compare_backends(rows=512, classes=20000, dim=512, repeats=3):
    """Median forward+dL/dx time and peak extra memory (beyond the inputs) of the torch backend and
    the unfused reference, on CPU."""
    from ._memory import peak_rss_increase

    x, y, w = _loss_inputs(rows, classes, dim)
    result = {}
    for backend in ("reference", "torch"):
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            _forward_backward(x, y, w, backend)
            times.append(time.perf_counter() - t0)
        result[backend] = {
            "seconds": statistics.median(times[1:]),
            "peak_bytes": peak_rss_increase(_inputs_for, _forward_backward, backend, rows, classes, dim),
        }
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40, help="training epochs on the digits")
    parser.add_argument("--classes", type=int, default=20000, help="classes of the backend comparison")
    args = parser.parse_args(argv)

    print(f"pedcc_kernels {pk.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"\n1. Training an MLP with PEDCCLoss on scikit-learn's digits, {args.epochs} epochs ...")
    res = train_digits(args.epochs)
    c = res["centroids"]
    print(f"   {res['seconds']:.1f} s, last batch loss {res['last_loss']:.3f}, "
          f"test accuracy {100 * res['test_accuracy']:.1f}%")
    print(f"   centroids (10 x 32): max cos {c['max_cos']:.4f}, bound {c['bound']:.4f}, "
          f"min distance {c['min_dist']:.4f}")
    print(f"\n2. Loss forward + dL/dx, N=512, d=512, C={args.classes}, float32, CPU ...")
    cmp = compare_backends(classes=args.classes)
    ref = cmp["reference"]
    for name, r in cmp.items():
        print(f"   {name:9s}  {1e3 * r['seconds']:8.1f} ms ({r['seconds'] / ref['seconds']:.2f}x)   "
              f"peak extra memory {r['peak_bytes'] / 2**20:8.1f} MiB "
              f"({r['peak_bytes'] / max(ref['peak_bytes'], 1):.2f}x)")


if __name__ == "__main__":
    main()
