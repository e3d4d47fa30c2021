"""Common benchmark harness: cases, measurement, ratios against the baseline, JSON and a PNG plot.

Measurement (DESIGN §6):
- time: the median over repeats after warm-up runs; CUDA events on a GPU, perf_counter on a CPU;
- memory: on a GPU, torch.cuda.max_memory_allocated (reset per case) minus what was allocated before
  the timed runs (the inputs); on a CPU, every case runs in a fresh subprocess and reports its peak
  RSS (VmHWM, reset after the warm-up) minus its RSS just before the timed runs, so "extra" is the
  memory the call itself needs;
- every figure is also given as a ratio against the baseline implementation (the unfused reference)
  measured in the same run, on the same shape.

A benchmark script defines `make_case(params) -> Prepared` (builds inputs, returns the call to time)
and `unavailable(params) -> str | None` (why a case cannot run here, or None). This file is also the
subprocess worker: `python harness.py --worker SPEC`.
"""
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
RESULT_PREFIX = "PEDCC_BENCH_RESULT "
SCHEMA_VERSION = 1
MIB = float(1 << 20)

# The package is used from the working tree, whether or not it is pip-installed.
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)



class Unavailable(Exception):
    """A case cannot run on this machine (missing package, device or op); the message says why."""


@dataclass
class Prepared:
    """One case, inputs built. `run()` is the call that is timed; it must leave no gradients behind
    (so each repeat allocates what a training step would). `check()` runs the call once more and
    returns a few floats that identify the result (loss value, gradient norm), compared across
    implementations of the same math. `input_bytes` and `flop` describe the work. `details()`, if
    given, runs after the measurement and returns what else the record should carry (the Triton
    autotuner's timing of every candidate config, for instance)."""
    run: Callable[[], None]
    input_bytes: int
    flop: Optional[float] = None
    check: Optional[Callable[[], dict]] = None
    note: str = ""
    details: Optional[Callable[[], dict]] = None


@dataclass
class Settings:
    """How much to measure: warm-up calls, then repeats until `repeats` or `max_time_s` (at least
    `min_repeats`)."""
    warmup: int = 2
    repeats: int = 10
    min_repeats: int = 3
    max_time_s: float = 5.0
    case_timeout_s: float = 900.0


# ---------------------------------------------------------------------------------------------------
# Machine description


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cublas_tflops(size: int = 8192, repeats: int = 10) -> dict:
    """The GPU's measured matmul rate (size^3 products, CUDA events), the ceiling that achieved
    TFLOP/s figures are read against: bf16, fp32 and fp32 with TF32."""
    import torch

    rates = {}
    previous = torch.get_float32_matmul_precision()
    try:
        for name, dtype, precision in (("bfloat16", torch.bfloat16, previous), ("float32", torch.float32, "highest"),
                                       ("tf32", torch.float32, "high")):
            torch.set_float32_matmul_precision(precision)
            a = torch.randn(size, size, device="cuda", dtype=dtype)
            b = torch.randn(size, size, device="cuda", dtype=dtype)
            for _ in range(2):
                a @ b
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(repeats):
                a @ b
            end.record()
            end.synchronize()
            rates[name] = round(2.0 * size ** 3 * repeats / (begin.elapsed_time(end) * 1e-3) / 1e12, 1)
            del a, b
    finally:
        torch.set_float32_matmul_precision(previous)
        torch.cuda.empty_cache()
    return rates


def machine_info(device: str) -> dict:
    """Where and with what a run was made: CPU/GPU model, versions, date, load."""
    import torch

    info = {
        "device": device,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": package_version("triton"),
        "numpy": package_version("numpy"),
        "liger_kernel": package_version("liger-kernel") or package_version("liger_kernel"),
        "pytorch_metric_learning": package_version("pytorch-metric-learning"),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / (1 << 30), 1)
        info["gpu_sm_count"] = props.multi_processor_count
        info["cublas_tflops"] = cublas_tflops()
    return info


def machine_name(info: dict) -> str:
    """A short human name: the GPU on a GPU run, else the CPU model and core count."""
    if info.get("gpu"):
        return info["gpu"]
    return f"{info['cpu']} ({info['cpu_count']} cores)"


def slug(text: str) -> str:
    out = "".join(ch.lower() if ch.isalnum() else "-" for ch in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def machine_slug(info: dict) -> str:
    if info.get("gpu"):
        return slug(info["gpu"])
    return slug(f"{info['cpu']}-{info['cpu_count']}cpu")


# ---------------------------------------------------------------------------------------------------
# Measuring one prepared case


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def measure_cpu(prepared: Prepared, settings: Settings) -> dict:
    """Times prepared.run on the CPU and reads the extra peak RSS of the timed calls."""
    t0 = time.perf_counter()
    prepared.run()
    first_call_s = time.perf_counter() - t0
    for _ in range(max(0, settings.warmup - 1)):
        prepared.run()
    # Resident set from /proc (Linux), the same readings as the demo and the examples; imported here
    # so that reading and rendering results needs neither torch nor the package.
    from pedcc_kernels._memory import current_rss_bytes, peak_rss_bytes, release_free_heap, reset_peak_rss

    release_free_heap()
    baseline = current_rss_bytes()
    peak_reset = reset_peak_rss()
    times = []
    start = time.perf_counter()
    while len(times) < settings.repeats:
        t0 = time.perf_counter()
        prepared.run()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= settings.min_repeats and time.perf_counter() - start > settings.max_time_s:
            break
    peak = peak_rss_bytes()
    result = {"times_ms": times, "first_call_s": first_call_s,
              "memory_method": "VmHWM reset after warm-up" if peak_reset else "VmHWM over the process life"}
    if baseline is not None and peak is not None:
        result["baseline_mib"] = baseline / MIB
        result["peak_mem_mib"] = peak / MIB
        result["extra_mem_mib"] = max(0, peak - baseline) / MIB
    return result


def measure_cuda(prepared: Prepared, settings: Settings) -> dict:
    """Times prepared.run with CUDA events and reads the allocator's peak above the inputs."""
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    prepared.run()
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - t0
    for _ in range(max(0, settings.warmup - 1)):
        prepared.run()
    torch.cuda.synchronize()
    gc.collect()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    start = time.perf_counter()
    while len(times) < settings.repeats:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        prepared.run()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
        if len(times) >= settings.min_repeats and time.perf_counter() - start > settings.max_time_s:
            break
    peak = torch.cuda.max_memory_allocated()
    return {"times_ms": times, "first_call_s": first_call_s, "memory_method": "torch.cuda.max_memory_allocated",
            "baseline_mib": baseline / MIB, "peak_mem_mib": peak / MIB,
            "extra_mem_mib": max(0, peak - baseline) / MIB}


def summarize(measured: dict, prepared: Prepared) -> dict:
    times = measured.pop("times_ms")
    out = dict(measured)
    out["time_ms"] = statistics.median(times)
    out["time_ms_min"] = min(times)
    out["repeats"] = len(times)
    out["input_mib"] = prepared.input_bytes / MIB
    if prepared.flop:
        out["tflops"] = prepared.flop / (out["time_ms"] * 1e-3) / 1e12
    if prepared.note:
        out["note"] = prepared.note
    if prepared.check is not None:
        out["check"] = {k: _finite(float(v)) for k, v in prepared.check().items()}
    if prepared.details is not None:
        out["details"] = prepared.details()
    return out


def autotune_keys(autotuner) -> set:
    """The keys a triton.autotune wrapper has tuned so far (snapshot before a case)."""
    return set(getattr(autotuner, "cache", {}))


def autotune_report(autotuner, known_keys=frozenset()) -> dict:
    """What a triton.autotune wrapper tuned since `known_keys` was taken: the chosen config per new
    key and, if there is one, each candidate's median time (ms) in the latest tuning (GPU cases share
    one process, so keys tuned by earlier cases are left out; a case whose key was tuned before
    reports nothing)."""
    tuned = {str(key): str(config) for key, config in getattr(autotuner, "cache", {}).items()
             if key not in known_keys}
    timings = {}
    for config, measured in ((getattr(autotuner, "configs_timings", None) or {}) if tuned else {}).items():
        value = measured[0] if isinstance(measured, (list, tuple)) else measured
        timings[str(config)] = _finite(float(value))
    return {"tuned": tuned, "candidates_ms": timings}


def load_script(path: str):
    name = "bench_" + slug(os.path.splitext(os.path.basename(path))[0]).replace("-", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_case_here(script: str, params: dict, settings: Settings) -> dict:
    """Builds and measures one case in this process; never raises."""
    device = params.get("device", "cpu")

    def measured(p):
        prepared = load_script(script).make_case(p)
        measure = measure_cuda if device == "cuda" else measure_cpu
        return summarize(measure(prepared, settings), prepared)

    try:
        return run_guarded(measured, params)
    finally:
        gc.collect()
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()


def run_guarded(runner: Callable[[dict], dict], params: dict) -> dict:
    """runner(params) as a record: status ok, or skipped on Unavailable, or error; never raises."""
    try:
        return {"status": "ok", **runner(params)}
    except Unavailable as exc:
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # a failing case is recorded and the run goes on
        kind = "out of memory" if "out of memory" in str(exc).lower() else type(exc).__name__
        return {"status": "error", "reason": f"{kind}: {exc}"[:500], "traceback": traceback.format_exc()[-2000:]}


def run_case_in_subprocess(script: str, params: dict, settings: Settings) -> dict:
    """Runs one case in a fresh Python process (so its peak RSS is its own) and returns its record."""
    spec = json.dumps({"script": script, "params": params, "settings": settings.__dict__})
    env = dict(os.environ)
    # A fixed mmap threshold stops glibc from raising it after large frees, so large buffers are
    # returned to the OS when freed and the RSS follows the live tensors.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec], capture_output=True,
                              text=True, env=env, timeout=settings.case_timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {settings.case_timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout)[-1500:]
    return {"status": "error", "reason": f"worker exited with code {proc.returncode}", "traceback": tail}


def worker_main(argv) -> int:
    spec = json.loads(argv[argv.index("--worker") + 1])
    result = run_case_here(spec["script"], spec["params"], Settings(**spec["settings"]))
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------
# A run: many cases, ratios, JSON, plot


@dataclass
class Section:
    """A family of cases measured against one baseline (None: no ratios): `x_key` is the swept size
    (plots' x axis), `panel_keys` split the plot into panels, `compare_keys` identify the shape a ratio
    is taken on."""
    name: str
    title: str
    baseline: Optional[str]
    x_key: str
    panel_keys: tuple
    compare_keys: tuple


@dataclass
class Run:
    benchmark: str
    script: str
    device: str
    out_dir: str
    settings: Settings
    dry_run: bool = False
    budget_s: Optional[float] = None
    tag: str = ""
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        self.info = machine_info(self.device)
        self.records = []
        self.sections = {}
        self.started = time.perf_counter()
        os.makedirs(self.out_dir, exist_ok=True)
        stem = f"{self.benchmark}-{machine_slug(self.info)}-{self.info['date']}"
        if self.dry_run:
            stem += "-dry-run"
        if self.tag:
            stem += f"-{slug(self.tag)}"
        self.json_path = os.path.join(self.out_dir, stem + ".json")
        self.png_path = os.path.join(self.out_dir, stem + ".png")
        self._reported_skips = set()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def out_of_budget(self) -> bool:
        return self.budget_s is not None and self.elapsed() > self.budget_s

    def add_section(self, section: Section):
        self.sections[section.name] = section

    def measure(self, section: str, cases: list, unavailable: Callable[[dict], Optional[str]],
                label: Callable[[dict], str], runner: Optional[Callable[[dict], dict]] = None):
        """Measures every case (dicts of params) of a section, with a progress bar.

        By default CPU cases run one subprocess each and GPU cases run in this process; `runner(params)
        -> result dict` replaces that for work measured otherwise (exceptions become error records).
        Unavailable cases and cases past the time budget are recorded as skipped with the reason,
        which is printed once per implementation.
        """
        from tqdm import tqdm

        interactive = sys.stderr.isatty()
        bar = tqdm(cases, desc=f"{self.benchmark}/{section}", unit="case", dynamic_ncols=True,
                   mininterval=0.1 if interactive else 60.0)
        for params in bar:
            bar.set_postfix_str(label(params), refresh=interactive)
            reason = unavailable(params)
            if reason is None and self.out_of_budget():
                reason = f"time budget of {self.budget_s:.0f} s spent"
            if reason is not None:
                result = {"status": "skipped", "reason": reason}
            elif runner is not None:
                result = run_guarded(runner, params)
            elif self.device == "cuda":
                result = run_case_here(self.script, params, self.settings)
            else:
                result = run_case_in_subprocess(self.script, params, self.settings)
            self.add_record(section, params, result, label, bar)
        bar.close()

    def add_record(self, section: str, params: dict, result: dict, label=None, bar=None):
        record = {"section": section, **params, **result}
        self.records.append(record)
        write = bar.write if bar is not None else print
        name = label(params) if label else str(params)
        if record["status"] == "ok" and "time_ms" in record:
            mem = record.get("extra_mem_mib")
            mem_text = f", extra {mem:.1f} MiB" if mem is not None else ""
            write(f"  {name}: {record['time_ms']:.3f} ms{mem_text}")
        elif record["status"] == "ok":
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                              if k in ("max_cos", "bound", "time_s") and isinstance(v, (int, float)))
            write(f"  {name}: {shown}")
        elif record["status"] == "error":
            write(f"  {name}: ERROR {record['reason']}")
        elif record["status"] == "skipped":
            key = (section, params.get("impl") or params.get("method"), record["reason"])
            if key not in self._reported_skips:
                self._reported_skips.add(key)
                write(f"  skipped {params.get('impl') or params.get('method')}: {record['reason']}")
        self.add_ratios()
        self.write_json()

    def add_ratios(self):
        """time_vs_ref and extra_mem_vs_ref for every record whose baseline ran on the same shape;
        for implementations of the same math, the relative difference of the check values."""
        for section in self.sections.values():
            if section.baseline is None:
                continue
            rows = [r for r in self.records if r["section"] == section.name]
            baselines = {tuple(r.get(k) for k in section.compare_keys): r for r in rows
                         if r.get("impl") == section.baseline and r["status"] == "ok"}
            for r in rows:
                base = baselines.get(tuple(r.get(k) for k in section.compare_keys))
                if r["status"] != "ok" or base is None:
                    continue
                r["time_vs_ref"] = r["time_ms"] / base["time_ms"] if base["time_ms"] > 0 else None
                if r.get("extra_mem_mib") is not None and base.get("extra_mem_mib"):
                    r["extra_mem_vs_ref"] = r["extra_mem_mib"] / base["extra_mem_mib"]
                if r.get("same_math") and r.get("check") and base.get("check"):
                    diffs = []
                    for key, value in r["check"].items():
                        ref = base["check"].get(key)
                        if (value is None) != (ref is None):  # non-finite on one side only (stored as None)
                            diffs.append(math.inf)
                            continue
                        if value is None:
                            continue
                        # '<g>_dot' (a gradient's dot with a unit direction) can be near 0 by chance:
                        # its difference is measured against the gradient's norm '<g>_norm' instead.
                        scale = abs(ref)
                        if key.endswith("_dot"):
                            scale = max(scale, abs(base["check"].get(key[:-4] + "_norm") or 0.0))
                        diffs.append(abs(value - ref) / max(scale, 1e-12))
                    r["check_rel_diff"] = max(diffs) if diffs else None

    def document(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "schema": SCHEMA_VERSION,
            "dry_run": self.dry_run,
            "machine": self.info,
            "machine_name": machine_name(self.info),
            "settings": self.settings.__dict__,
            "config": self.config,
            "sections": {name: s.__dict__ for name, s in self.sections.items()},
            "wall_s": round(self.elapsed(), 1),
            "results": self.records,
        }

    def write_json(self):
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, suffix=".json.tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.document(), f, indent=1, default=str)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.json_path)

    def finish(self) -> int:
        """Writes the JSON and the plot, prints the tables; returns 1 when a case failed, else 0."""
        self.write_json()
        sys.path.insert(0, BENCH_DIR)
        from plots import plot_sections
        from render_tables import render_document

        plot_sections(self.document(), self.png_path)
        print()
        print(render_document(self.document()))
        print(f"wrote {self.json_path}\nwrote {self.png_path}")
        errors = [r for r in self.records if r["status"] == "error"]
        for r in errors:
            print(f"ERROR in {r['section']} {r.get('impl') or r.get('method')}: {r['reason']}", file=sys.stderr)
        return 1 if errors else 0


# ---------------------------------------------------------------------------------------------------
# Shared command-line options


def add_common_args(parser, default_budget=None):
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when a GPU is visible, else cpu")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, seconds; output to a "
                        "temporary folder unless --out-dir is given")
    parser.add_argument("--out-dir", default=None, help=f"where JSON and PNG go (default {RESULTS_DIR})")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--max-time", type=float, default=None, help="seconds of timed repeats per case, at most")
    parser.add_argument("--budget-s", type=float, default=default_budget,
                        help="skip the remaining cases (with a printed reason) after this many seconds")
    parser.add_argument("--tag", default="", help="suffix of the output file names")


def resolve_common(args):
    """Device, output folder and measurement settings from the common options."""
    import torch

    if args.dry_run:
        device = "cpu"
    elif args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    out_dir = args.out_dir or (tempfile.mkdtemp(prefix="pedcc-bench-dry-") if args.dry_run else RESULTS_DIR)
    if args.dry_run:
        settings = Settings(warmup=1, repeats=2, min_repeats=1, max_time_s=1.0, case_timeout_s=300)
    elif device == "cuda":
        settings = Settings(warmup=3, repeats=20, min_repeats=5, max_time_s=1.0, case_timeout_s=600)
    else:
        settings = Settings(warmup=1, repeats=5, min_repeats=3, max_time_s=20.0, case_timeout_s=1800)
    if args.warmup is not None:
        settings.warmup = max(1, args.warmup)
    if args.repeats is not None:
        settings.repeats = max(1, args.repeats)
        settings.min_repeats = min(settings.min_repeats, settings.repeats)
    if args.max_time is not None:
        settings.max_time_s = args.max_time
    return device, out_dir, settings


if __name__ == "__main__" and "--worker" in sys.argv:
    sys.path.insert(0, BENCH_DIR)
    import harness as _harness  # the module, not __main__, so bench scripts share its classes

    sys.exit(_harness.worker_main(sys.argv))
