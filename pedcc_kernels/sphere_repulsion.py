"""Iterative centroid generators on the sphere (DESIGN §3), both driven by the N-body force op.

`repulsion`: projected heavy-ball steps on the log-sum-exp of all pairwise cosines, a soft maximum
whose sharpness beta (inverse temperature) rises each time the largest cosine stops improving, so
the early iterations reshape the whole cosine distribution and the late ones press only the pairs at
the maximum. Once beta is large the cosines come from split bf16 operands on CPU (the op's
'bf16x3': plain bf16 operands' cosine error, about 1e-4, is then a sizeable part of the
temperature). Stops when the largest cosine has not improved at the sharpest setting. (This
replaced a hinge potential whose target followed the maximum: at (10000, 512) on the 2-core CPU it
stopped at a largest cosine of 0.061 after 213 s, this schedule without the exact phase at 0.053
after 437 s; benchmarks/results has the runs.)

`charge_model`: the authors' generator (inverse-square forces between unit charges, tangential part,
velocity update, renormalisation), vectorised through the op, with the step scaled by 1/(C-1).

Both keep fp32 master positions and O(C d) memory on any device (the op tiles its pair loop).
"""
import math
import sys
import time
from dataclasses import dataclass, field

import torch

from .nbody import default_impl, force_engine


@dataclass
class OptimiserResult:
    """points: (C, d) float32 unit rows (the best iterate for `repulsion`, the last for the charge
    model); history: largest cosine at each evaluated iterate; iterations; seconds; stop_reason;
    engine: the force function that ran (force_engine's name, or 'custom'; 'A, then B' when the
    repulsion's end phase changed it); times: seconds from the start to each evaluation of
    `history` (the repulsion's exact phase costs more per iteration)."""
    points: torch.Tensor
    history: list = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    stop_reason: str = ""
    engine: str = ""
    times: list = field(default_factory=list)


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


def _engine(device, impl, engine, cpu_default=None):
    """(force function, its name): `engine` itself when given, else force_engine with `impl` (None:
    cpu_default on a CPU if given, else default_impl of the device)."""
    if engine is not None:
        return engine, "custom"
    if impl is None:
        impl = cpu_default if cpu_default and torch.device(device).type == "cpu" else default_impl(device)
    return force_engine(device, impl=impl)


def _tangent_step(x, direction, lr):
    """x <- normalise(x + lr * direction): a retraction of the tangent step onto the sphere."""
    x.add_(direction, alpha=lr)
    x.div_(x.norm(dim=1, keepdim=True).clamp_min(1e-30))


# bf16-operand engines, and how fast beta grows in the end phase (the top of the schedule, where each
# step of beta gains little).
BF16_ENGINES = ("op:tensor_core", "triton")
EXACT_GROWTH = 1.2
# The CPU engine of the end phase: split bf16 operands, cosines near the shift to about 1e-6 (fp32's
# 'auto' gives 1e-7 at twice the time: 0.83 s against 0.4 s at C=10000, d=512 on the 2-core CPU).
END_IMPL_CPU = "bf16x3"


@torch.no_grad()
def repulsion(points, *, max_iters=3000, lr=2.0, momentum=0.9, sharpness=(2.0, 1000.0), growth=1.05, window=5,
              patience=20, exact_from=90.0, time_limit=None, impl=None, progress=False, engine=None):
    """Lower the largest pairwise cosine of `points` by projected heavy-ball steps on a soft maximum.

    Each iteration takes the op's lse forces at temperature 1/beta, shifted by the last largest
    cosine (weights exp(beta (c - max)) <= ~1: only the pairs near the maximum push). beta starts at
    sharpness[0] * sqrt(d) and grows by `growth` whenever the best largest cosine has not improved for
    `window` iterations, up to sharpness[1] * sqrt(d) (the cosines of a well spread set scale as
    1/sqrt(d), so these are per-dimension constants). The forces are divided by their RMS over the
    points and the step is lr / beta radians per unit force: the move is an angle on the scale of the
    temperature, independent of C (the force sums grow with C; normalising removes that).

    From beta = exact_from * sqrt(d) on, beta grows by 1.2 a step, and on CPU the bf16-operand op
    ('tensor_core') gives way to 'bf16x3', whose cosines near the shift are good to about 1e-6: near
    the end the pairs that matter sit within a temperature (1/beta, ~1e-3 to 1e-4) of the maximum,
    where bf16 operands' cosine error (~1e-4) would decide which pairs push. On the 2-core CPU this
    exact, sharper end (then with the fp32 op) lowered the result by 1.5-2% at (1000, 64), (2000,
    128) and (10000, 512) (benchmarks/results, ...-exact-end.json); 'bf16x3' costs half the fp32
    op's time there. On CUDA the engine stays (the exact SIMT kernel is several times slower there;
    not measured).

    Stops at max_iters force evaluations, after time_limit seconds, or when at the largest beta the
    best largest cosine has not improved for `patience` iterations ("converged").

    Args:
        points: (C, d) float tensor, the start (rows are normalised; any device the engine serves).
        max_iters: cap on force evaluations.
        lr, momentum: step (radians per unit RMS force, times the temperature) and heavy-ball
            coefficient of the velocity (tangent vectors, an exponential average of the forces).
        sharpness: (first, last) beta / sqrt(d).
        growth, window: beta *= growth after `window` iterations without a new best. A slower rise
            ends lower: at (10000, 512) on the 2-core CPU growth 1.1 converged at 0.0524 in 307 s,
            1.05 at 0.0519 in 388 s, 1.03 at 0.0518 in 656 s.
        patience: iterations without a new best at the last beta before stopping.
        exact_from: beta / sqrt(d) where the end phase starts (faster growth; on CPU the 'bf16x3' op
            replaces the bf16 one, a custom `engine` never is); None: no end phase.
        time_limit: seconds, or None.
        impl: the force implementation ('auto', 'simt', 'tensor_core', 'bf16x3', 'triton'); None picks
            nbody.default_impl(device): the bf16-operand op on CPU, the Triton kernel on CUDA.
        progress: show a progress bar (iteration, largest cosine, time).
        engine: force function (points, potential, param, shift=...) -> (forces, max_cos, energy);
            default the compiled op for the device with `impl`, else the chunked torch version.

    Returns:
        OptimiserResult with the best point set seen (float32, on the device of `points`); history
        holds the largest cosine of every evaluated iterate (to the engine's precision: about 1e-4
        with bf16 operands; measure the result with `centroid_stats`); engine names both engines
        ('op:tensor_core, then op:bf16x3') when the exact one took over.
    """
    x = _as_master(points)
    c, d = x.shape
    if not (len(sharpness) == 2 and 0 < sharpness[0] <= sharpness[1]):
        raise ValueError(f"sharpness must be (first, last) with 0 < first <= last, got {sharpness}")
    if not growth > 1 or window < 1 or patience < 1:
        raise ValueError(f"need growth > 1, window >= 1, patience >= 1, got {growth}, {window}, {patience}")
    if exact_from is not None and not exact_from > 0:
        raise ValueError(f"exact_from must be None or > 0, got {exact_from}")
    engine, engine_name = _engine(x.device, impl, engine)
    beta = sharpness[0] * math.sqrt(d)
    beta_last = sharpness[1] * math.sqrt(d)
    # The end phase: from here beta grows faster, and on CPU a bf16-operand engine gives way to the
    # split-operand one (1.5x its cost there). On CUDA the exact engine would be the SIMT kernel, 5-8x
    # slower than the bf16 ones on an H200, a trade-off no GPU run has measured yet: the engine stays.
    end_beta = math.inf if exact_from is None else exact_from * math.sqrt(d)
    switch_engine = engine_name in BF16_ENGINES and x.device.type == "cpu"
    step_growth = growth
    velocity = torch.zeros_like(x)
    best_points = x.clone()
    best = math.inf
    history, times = [], []
    since_best = 0
    shift = 1.0  # the largest cosine there can be, until the first evaluation says
    reason = "max_iters"
    bar = Progress(progress, max_iters, "repulsion")
    start = time.perf_counter()
    iteration = 0
    for iteration in range(1, max_iters + 1):
        if beta >= end_beta:
            end_beta = math.inf
            step_growth = max(growth, EXACT_GROWTH)
            if switch_engine:
                engine, exact_name = force_engine(x.device, impl=END_IMPL_CPU)
                engine_name = f"{engine_name}, then {exact_name}"
                # The best so far was judged by bf16 cosines: judge it again, exactly.
                best = float(engine(best_points, "lse", 1.0 / beta, shift=shift)[1].max())
        forces, row_max, _ = engine(x, "lse", 1.0 / beta, shift=shift)
        current = float(row_max.max())
        history.append(current)
        times.append(time.perf_counter() - start)
        if not math.isfinite(current):
            reason = "non-finite cosine" if c > 1 else "a single point"
            break
        if current < best:
            best = current
            best_points.copy_(x)
            since_best = 0
        else:
            since_best += 1
        bar.update(iteration, current, best)
        if since_best >= window and beta < beta_last:
            beta = min(beta_last, beta * step_growth)
            since_best = 0
        elif since_best >= patience:
            reason = "converged"
            break
        if time_limit is not None and time.perf_counter() - start >= time_limit:
            reason = "time limit"
            break
        shift = current
        rms = torch.linalg.vector_norm(forces).div_(math.sqrt(c)).clamp_min_(1e-30)  # RMS force per point
        velocity.mul_(momentum).addcdiv_(forces, rms, value=1.0 - momentum)
        _tangent_step(x, velocity, lr / beta)
        velocity.addcmul_(torch.linalg.vecdot(velocity, x).unsqueeze_(1), x, value=-1.0)
    bar.close()
    return OptimiserResult(best_points, history, iteration, time.perf_counter() - start, reason, engine_name, times)


@torch.no_grad()
def charge_model(points, *, max_iters=200, step=None, impl=None, progress=False, engine=None):
    """The authors' PEDCC generator: unit charges on the sphere under inverse-square forces.

    Per iteration: F = tangential part of sum_j (x_i - x_j)/|x_i - x_j|^3 (the op's Coulomb force),
    x <- normalise(x + v), v <- v + G F, for a fixed number of iterations (the authors use 200 with
    G = 0.01 for tens of classes). The force grows with C, so G = step defaults to 1/(C-1), which
    matches their step near C = 100 and keeps larger C from blowing up.

    Args:
        points: (C, d) float tensor, the start.
        max_iters: iterations (the model has no stopping rule of its own).
        step: G; default 1/(C-1).
        impl, progress, engine: as for `repulsion`, except that impl=None on a CPU is the fp32 op.

    Returns:
        OptimiserResult with the last point set (float32).
    """
    x = _as_master(points)
    c = x.shape[0]
    # On CPU the baseline keeps fp32 products (its committed figures were measured so).
    engine, engine_name = _engine(x.device, impl, engine, cpu_default="auto")
    g = step if step is not None else 1.0 / max(1, c - 1)
    velocity = torch.zeros_like(x)
    maxima = []  # device scalars: no host sync per iteration unless a progress bar shows them
    best = math.inf
    bar = Progress(progress, max_iters, "pedcc")
    start = time.perf_counter()
    for iteration in range(1, max_iters + 1):
        forces, row_max, _ = engine(x, "coulomb", 1.0)
        maxima.append(row_max.max())
        if progress:
            best = min(best, float(maxima[-1]))
            bar.update(iteration, float(maxima[-1]), best)
        _tangent_step(x, velocity, 1.0)
        velocity.add_(forces, alpha=g)
    bar.close()
    history = torch.stack(maxima).tolist()
    return OptimiserResult(x, history, max_iters, time.perf_counter() - start, "max_iters", engine_name)
