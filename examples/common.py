"""Pieces shared by the example scripts: determinism, the digits data, a small CNN, the three kinds of
classifier head compared in the seed paper, and a training loop with a progress bar.

The scripts import the package as a user would (`import pedcc_kernels as pk`); nothing here reaches
into its internals.
"""
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import pedcc_kernels as pk

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def make_deterministic(seed: int, threads: int = 1) -> None:
    """Seed every generator and forbid non-deterministic kernels, so a CPU run repeats bit for bit."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    if threads > 0:
        torch.set_num_threads(threads)


def load_digits_split(test_size: float = 0.5, split_seed: int = 0, classes: int = 10):
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), a fixed stratified split.

    classes: keep only digits 0 .. classes-1 (for small or quick runs).
    Returns (train_x (N, 1, 8, 8) float32 in [0, 1], train_y (N,) int64, test_x, test_y).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 2 <= classes <= 10:
        raise ValueError(f"classes must be in [2, 10], got {classes}")
    digits = load_digits()
    keep = digits.target < classes
    images = digits.images[keep].astype(np.float32) / 16.0
    labels = digits.target[keep].astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(images, labels, test_size=test_size, stratify=labels,
                                              random_state=split_seed)
    as_images = lambda a: torch.from_numpy(a).unsqueeze(1)  # noqa: E731
    return as_images(tr_x), torch.from_numpy(tr_y), as_images(te_x), torch.from_numpy(te_y)


class DigitsNet(nn.Module):
    """Small CNN for 8x8 images -> (N, embedding_size) features.

    The features end in BatchNorm1d(affine=False), as in the PEDCC-Loss authors' networks, so every
    head sees zero-mean, unit-variance features.
    """

    def __init__(self, embedding_size: int):
        super().__init__()
        block = lambda cin, cout: [nn.Conv2d(cin, cout, 3, padding=1, bias=False),  # noqa: E731
                                   nn.BatchNorm2d(cout), nn.ReLU()]
        self.body = nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2),
                                  *block(32, 64), *block(64, 64), nn.MaxPool2d(2), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(64 * 2 * 2, embedding_size, bias=False),
                                   nn.BatchNorm1d(embedding_size, affine=False))

    def forward(self, images):
        return self.embed(self.body(images))


class CrossEntropyHead(nn.Module):
    """Softmax cross-entropy on a learned linear classifier (the seed's 'Softmax Loss')."""

    def __init__(self, num_classes, embedding_size):
        super().__init__()
        self.classifier = nn.Linear(embedding_size, num_classes)

    def forward(self, features, labels):
        return F.cross_entropy(self.classifier(features), labels)

    @torch.no_grad()
    def predict(self, features):
        return self.classifier(features).argmax(1)

    def class_directions(self):
        return self.classifier.weight.detach()


class AMSoftmaxHead(nn.Module):
    """AM-Softmax (Wang et al. 2018) on a learned, normalised classifier: softmax of s (cos - m [j=y])."""

    def __init__(self, num_classes, embedding_size, s, m):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.xavier_uniform_(self.weight)
        self.s, self.m = s, m

    def cosines(self, features):
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()

    def forward(self, features, labels):
        cos = self.cosines(features)
        return F.cross_entropy(self.s * (cos - self.m * F.one_hot(labels, cos.shape[1])), labels)

    @torch.no_grad()
    def predict(self, features):
        return self.cosines(features).argmax(1)

    def class_directions(self):
        return F.normalize(self.weight.detach(), dim=1)


class PEDCCHead(nn.Module):
    """PEDCC-Loss from the package on fixed generated centroids (trainable after start_finetuning())."""

    def __init__(self, num_classes, embedding_size, s, m, n, lam=1.0, centroid_seed=0):
        super().__init__()
        centroids = pk.generate_centroids(num_classes, embedding_size, seed=centroid_seed)
        self.criterion = pk.PEDCCLoss(num_classes, embedding_size, centroids=centroids, s=s, m=m, n=n,
                                      lam=lam)

    def forward(self, features, labels):
        return self.criterion(features, labels)

    @torch.no_grad()
    def predict(self, features):
        return self.criterion.predict(features)

    def class_directions(self):
        return F.normalize(self.criterion.centroids.detach(), dim=1)


def make_head(kind, num_classes, embedding_size, *, s, m, n=1.0, centroid_seed=0):
    """kind: 'ce' | 'am' | 'pedcc'."""
    if kind == "ce":
        return CrossEntropyHead(num_classes, embedding_size)
    if kind == "am":
        return AMSoftmaxHead(num_classes, embedding_size, s, m)
    if kind == "pedcc":
        return PEDCCHead(num_classes, embedding_size, s, m, n, centroid_seed=centroid_seed)
    raise ValueError(f"unknown head kind {kind!r}")


def make_sgd(model, head, lr, weight_decay):
    """SGD with momentum as in the seed's recipe; the head's own parameters (learned classifiers)
    train with the network, generated centroids are buffers and do not."""
    params = list(model.parameters()) + list(head.parameters())
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


@torch.no_grad()
def evaluate(model, head, images, labels, batch_size=512):
    """Test accuracy in [0, 1] and the (N, d) features, with the network in eval mode."""
    model.eval()
    features = torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    accuracy = (head.predict(features) == labels).double().mean().item()
    return accuracy, features


def cosine_factor(step, total_steps):
    """Learning-rate multiplier of a cosine schedule from 1 at step 0 to 0 at total_steps."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def train(model, head, train_x, train_y, *, epochs, batch_size, lr, weight_decay=5e-4,
          finetune_epoch=None, finetune_lr=None, seed=0, desc="train", progress=True):
    """Mini-batch SGD (momentum 0.9) with a cosine learning-rate schedule over all steps.

    finetune_epoch: for a PEDCCHead, the epoch at which the centroids become trainable (seed §4.1):
    `head.criterion.start_finetuning()` turns them into a Parameter, which joins the optimiser as its
    own group at finetune_lr without weight decay. The cosine factor scales every group alike.
    Returns a dict with the per-step losses and the per-epoch mean losses.
    """
    optimizer = make_sgd(model, head, lr, weight_decay)
    # The last partial batch is dropped: BatchNorm statistics of a handful of rows are noise, and
    # they would leak into the running statistics used at test time.
    steps_per_epoch = len(train_x) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {len(train_x)} training rows")
    total_steps = epochs * steps_per_epoch
    order_gen = torch.Generator().manual_seed(seed)
    step_losses, epoch_losses = [], []
    base_lrs = [lr]
    step = 0
    bar = tqdm(range(epochs), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        if finetune_epoch is not None and epoch == finetune_epoch:
            centroids = head.criterion.start_finetuning()
            optimizer.add_param_group({"params": [centroids], "lr": finetune_lr, "weight_decay": 0.0})
            base_lrs.append(finetune_lr)
        model.train()
        order = torch.randperm(len(train_x), generator=order_gen)
        losses = []
        for start in range(0, steps_per_epoch * batch_size, batch_size):
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * cosine_factor(step, total_steps)
            idx = order[start:start + batch_size]
            loss = head(model(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        step_losses += losses
        epoch_losses.append(sum(losses) / len(losses))
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
    return {"step_losses": step_losses, "epoch_losses": epoch_losses}


def write_json(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def add_run_args(p):
    """The options every example shares: CPU threads, output folder, progress bars."""
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output folder (default {display_path(DEFAULT_OUT)})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def record_run(out, stem, script, argv, config, rows, started, render, **extra):
    """The result of an example run: {command, config, **extra, rows, elapsed_s}, written as
    out/stem.json with the table render(rows, command, config) as out/stem.md (and printed)."""
    command = command_line(script, argv)
    result = {"command": command, "config": config, **extra, "rows": rows,
              "elapsed_s": time.perf_counter() - started}
    write_results(out, stem, render(rows, command, config), result)
    return result


def write_results(out, stem, table, result):
    """Write out/stem.md (the table) and out/stem.json (the result), and print the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(table)
    write_json(out / f"{stem}.json", result)
    print()
    print(table)


REPO_ROOT = Path(__file__).resolve().parent.parent


def display_path(path):
    """A path as written in result files and help texts: relative to the checkout when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def command_line(script, argv):
    """The command that reproduces a run, for the result files."""
    return " ".join(["python", display_path(script)] + list(argv))


def run_config(args, skip=()):
    """argparse namespace -> JSON-ready dict (paths shown with display_path)."""
    return {k: display_path(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in skip}
