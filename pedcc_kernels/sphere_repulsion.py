"""Iterative centroid generators on the sphere (DESIGN §3), both driven by the N-body force op.

`repulsion`: projected heavy-ball steps on the hinge potential max(0, cos - tau)^2, whose target tau
follows the largest cosine down (a tenth of the way from it to the Levenshtein bound), so only the
pairs that set the maximum push. Stops when the largest cosine stops improving. (The op's 'lse'
potential with an annealed temperature works too, but spreads its force over the many pairs near
the bulk of the cosines and needed more iterations for the same maximum while this was tuned.)

`charge_model`: the authors' generator (inverse-square forces between unit charges, tangential part,
velocity update, renormalisation), vectorised through the op, with the step scaled by 1/(C-1).

Both keep fp32 master positions and O(C d) memory on any device (the op tiles its pair loop).
"""
import math
import sys
import time
from dataclasses import dataclass, field

import torch

from .nbody import force_engine
from .spherical_bounds import max_cos_lower_bound


@dataclass
class OptimiserResult:
    """points: (C, d) float32 unit rows (the best iterate for `repulsion`, the last for the charge
    model); history: largest cosine at each evaluated iterate; iterations; seconds; stop_reason."""
    points: torch.Tensor
    history: list = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    stop_reason: str = ""


class Progress:
    """A tqdm bar when tqdm is installed, else a line on stderr every couple of seconds."""

    def __init__(self, enabled, total, desc):
        self.enabled = enabled
        self.bar = None
        self.last_print = 0.0
        self.start = time.perf_counter()
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc=desc, unit="it", leave=True, dynamic_ncols=True)

    def update(self, iteration, max_cos, best):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"max cos {max_cos:.4f} best {best:.4f}", refresh=False)
            return
        now = time.perf_counter()
        if now - self.last_print >= 2.0:
            self.last_print = now
            print(f"iteration {iteration}: max cos {max_cos:.4f}, best {best:.4f}, "
                  f"{now - self.start:.1f} s", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _as_master(points):
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[0] == 0:
        raise ValueError("points must be a non-empty (C, d) tensor")
    return torch.nn.functional.normalize(points.detach().to(torch.float32), dim=1).contiguous()


def _tangent_step(x, direction, lr):
    """x <- normalise(x + lr * direction): a retraction of the tangent step onto the sphere."""
    x.add_(direction, alpha=lr)
    x.div_(x.norm(dim=1, keepdim=True).clamp_min(1e-30))


@torch.no_grad()
def repulsion(points, *, max_iters=2000, lr=0.5, momentum=0.8, target_fraction=0.1, patience=8,
              min_lr_fraction=1 / 32, progress=False, engine=None):
    """Lower the largest pairwise cosine of `points` by projected heavy-ball steps.

    Each iteration evaluates the hinge forces at tau = m - target_fraction * (m - bound) (m: current
    largest cosine, bound: `max_cos_lower_bound`), so a pair pushes in proportion to how far it
    sits above a target just under the maximum. The force on a point sums only its pairs above tau,
    not all C - 1 (whose Coulomb sum grows with C and breaks the authors' fixed step), so the step
    is an angle whose scale does not grow with C; it adapts instead. When the best largest
    cosine has not improved by 0.1% of its distance to the bound for `patience` iterations, the
    step halves and the walk restarts from the best point set; it stops once the step is below
    min_lr_fraction * lr, or after max_iters force evaluations.

    Args:
        points: (C, d) float tensor, the start (rows are normalised; any device the engine serves).
        max_iters: cap on force evaluations.
        lr, momentum: step and heavy-ball coefficient of the velocity (tangent vectors).
        target_fraction: how far below the maximum the hinge target sits, as a fraction of the gap
            between the maximum and the bound.
        patience, min_lr_fraction: the stopping rule above.
        progress: show a progress bar (iteration, largest cosine, time).
        engine: force function (points, potential, param) -> (forces, max_cos, energy); default
            the compiled op for the device, else the chunked torch version.

    Returns:
        OptimiserResult with the best point set seen (float32, on the device of `points`).
    """
    x = _as_master(points)
    c, d = x.shape
    engine = engine or force_engine(x.device)[0]
    bound = max_cos_lower_bound(c, d)
    velocity = torch.zeros_like(x)
    best_points = x.clone()
    best = math.inf
    history = []
    stall = 0
    step = lr
    reason = "max_iters"
    bar = Progress(progress, max_iters, "repulsion")
    start = time.perf_counter()
    iteration = 0
    tau = 1.0
    for iteration in range(1, max_iters + 1):
        forces, row_max, _ = engine(x, "hinge", tau)
        current = float(row_max.max())
        history.append(current)
        if not math.isfinite(current):
            reason = "non-finite cosine"
            break
        if current < best - 1e-3 * max(best - bound, 1e-9) or not math.isfinite(best):
            best = current
            best_points.copy_(x)
            stall = 0
        else:
            stall += 1
        bar.update(iteration, current, best)
        if best - bound <= 1e-7:
            reason = "reached the bound"
            break
        if stall >= patience:
            step *= 0.5
            stall = 0
            if step < min_lr_fraction * lr:
                reason = "converged"
                break
            x.copy_(best_points)
            velocity.zero_()
            current = best
        elif tau < 1.0:
            velocity.mul_(momentum).add_(forces)
            _tangent_step(x, velocity, step)
            velocity.sub_((velocity * x).sum(dim=1, keepdim=True) * x)
        tau = max(-1.0, min(1.0, current - target_fraction * (current - bound)))
    bar.close()
    return OptimiserResult(best_points, history, iteration, time.perf_counter() - start, reason)


@torch.no_grad()
def charge_model(points, *, max_iters=200, step=None, progress=False, engine=None):
    """The authors' PEDCC generator: unit charges on the sphere under inverse-square forces.

    Per iteration: F = tangential part of sum_j (x_i - x_j)/|x_i - x_j|^3 (the op's Coulomb force),
    x <- normalise(x + v), v <- v + G F, for a fixed number of iterations (the authors use 200 with
    G = 0.01 for tens of classes). The force grows with C, so G = step defaults to 1/(C-1), which
    matches their step near C = 100 and keeps larger C from blowing up.

    Args:
        points: (C, d) float tensor, the start.
        max_iters: iterations (the model has no stopping rule of its own).
        step: G; default 1/(C-1).
        progress, engine: as for `repulsion`.

    Returns:
        OptimiserResult with the last point set (float32).
    """
    x = _as_master(points)
    c = x.shape[0]
    engine = engine or force_engine(x.device)[0]
    g = step if step is not None else 1.0 / max(1, c - 1)
    velocity = torch.zeros_like(x)
    history = []
    best = math.inf
    bar = Progress(progress, max_iters, "pedcc")
    start = time.perf_counter()
    for iteration in range(1, max_iters + 1):
        forces, row_max, _ = engine(x, "coulomb", 1.0)
        current = float(row_max.max())
        history.append(current)
        best = min(best, current)
        bar.update(iteration, current, best)
        _tangent_step(x, velocity, 1.0)
        velocity.add_(forces, alpha=g)
    bar.close()
    history.append(float(engine(x, "coulomb", 1.0)[1].max()))
    return OptimiserResult(x, history, max_iters, time.perf_counter() - start, "max_iters")
