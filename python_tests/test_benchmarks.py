"""The benchmark suite works: the device check's dry run (both benchmarks at tiny shapes on the CPU)
finishes and writes valid JSON, plots and tables; the harness measures memory and takes ratios
correctly. No timing is asserted."""
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCH)

import harness  # noqa: E402
import render_tables  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join(BENCH, "device_check.sh"), "--dry-run"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    return out, proc


def load(out, benchmark):
    paths = [p for p in os.listdir(out) if p.startswith(benchmark + "-") and p.endswith(".json")]
    assert len(paths) == 1, f"expected one {benchmark} JSON in {sorted(os.listdir(out))}"
    with open(os.path.join(out, paths[0])) as f:
        return json.load(f)


def check_common(doc, benchmark):
    assert doc["benchmark"] == benchmark and doc["dry_run"] is True
    for key in ("cpu", "torch", "date", "started_utc", "device"):
        assert doc["machine"][key], key
    assert doc["results"], "no case was recorded"
    for r in doc["results"]:
        assert r["status"] in ("ok", "skipped"), f"{r.get('impl') or r.get('method')}: {r.get('reason')}"
        if r["status"] == "skipped":
            assert r["reason"]


def test_device_check_dry_run_succeeds_within_the_file_limits(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "device check (dry run)" in proc.stdout
    names = sorted(os.listdir(out))
    assert len(names) <= 8, names  # the GPU machine sends back at most 8 files
    for name in names:
        assert os.path.isfile(os.path.join(out, name)) and re.fullmatch(r"[A-Za-z0-9._-]+", name), name
    for required in ("log.txt", "summary.txt", "tables.md"):
        assert required in names
    pngs = [n for n in names if n.endswith(".png")]
    assert len(pngs) == 2
    for name in pngs:
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC


def test_loss_dry_run_json(dry_run):
    out, _ = dry_run
    doc = load(out, "loss")
    check_common(doc, "loss")
    rows = doc["results"]
    shapes = {(r["N"], r["C"], r["d"]) for r in rows}
    assert len(shapes) >= 2
    for shape in shapes:
        by_impl = {r["impl"]: r for r in rows if (r["N"], r["C"], r["d"]) == shape}
        ref, ours = by_impl["reference"], by_impl["torch"]
        assert ref["status"] == "ok" and ours["status"] == "ok"
        assert ref["time_vs_ref"] == 1.0
        assert ref["time_ms"] > 0 and ours["time_ms"] > 0 and ours["time_vs_ref"] > 0
        assert ours["extra_mem_mib"] >= 0 and ref["extra_mem_mib"] >= 0
        # the same math as the reference, in float32: loss and gradient checks agree
        assert ours["check_rel_diff"] < 1e-4
        assert ours["tflops"] > 0
        if by_impl.get("triton", {}).get("status") == "ok":
            assert by_impl["triton"]["check_rel_diff"] < 1e-3
            tuning = by_impl["triton"]["details"]["autotuning"]["forward_sweep"]
            assert set(tuning) == {"tuned", "candidates_ms"}
        if by_impl.get("triton_gemm", {}).get("status") == "ok":
            assert by_impl["triton_gemm"]["check_rel_diff"] < 1e-3
            assert 1 <= by_impl["triton_gemm"]["details"]["chunk_classes"] <= shape[1]
        if by_impl.get("triton_epilogue", {}).get("status") == "ok":
            assert by_impl["triton_epilogue"]["check_rel_diff"] < 1e-3
            details = by_impl["triton_epilogue"]["details"]
            assert details["op"] == "epilogue" and 1 <= details["chunk_classes"] <= shape[1]


def test_centroids_dry_run_json(dry_run):
    out, _ = dry_run
    doc = load(out, "centroids")
    check_common(doc, "centroids")
    force = [r for r in doc["results"] if r["section"] == "force"]
    quality = [r for r in doc["results"] if r["section"] == "quality"]
    assert force and quality
    from pedcc_kernels import _ext

    if _ext.available():
        assert all(r["status"] == "ok" and r["time_ms"] > 0 for r in force if r["impl"] == "op")
    # bf16 operands (op_bf16, tensor_core) keep about 3 digits; so does op_bf16x3 unshifted (its product
    # comes back in bf16)
    for r in force:
        if r["status"] == "ok" and r.get("check_rel_diff") is not None:
            bf16 = r["impl"] in ("op_bf16", "op_bf16x3", "tensor_core")
            assert r["check_rel_diff"] < (1e-2 if bf16 else 1e-3), r
    random_rows = [r for r in quality if r["method"] == "random"]
    assert random_rows and random_rows[0]["status"] == "ok"
    for r in quality:
        if r["status"] == "ok":
            assert -1.0 <= r["bound"] <= r["max_cos"] + 1e-6 <= 1.0 + 1e-6
            assert r["time_s"] >= 0


def test_tables_name_machine_and_every_measured_case(dry_run):
    out, _ = dry_run
    tables = (out / "tables.md").read_text()
    doc = load(out, "loss")
    assert doc["machine_name"] in tables and doc["machine"]["date"] in tables
    measured = [r for r in doc["results"] if r["status"] == "ok"]
    assert tables.count("| float32 | dx |") >= len(measured)


# A case whose call allocates (and touches) a known number of bytes beyond its inputs.
CASE_SCRIPT = '''
import torch
from harness import Prepared

def make_case(params):
    inputs = torch.ones(params["input_mib"] * 262144)
    def run():
        work = torch.ones(params["work_mib"] * 262144)
        work += inputs[0]
    return Prepared(run=run, input_bytes=inputs.numel() * 4)
'''


def test_cpu_subprocess_measures_the_extra_memory_of_the_call(tmp_path):
    script = tmp_path / "case_script.py"
    script.write_text(CASE_SCRIPT)
    settings = harness.Settings(warmup=1, repeats=2, min_repeats=1, max_time_s=5.0, case_timeout_s=300)
    result = harness.run_case_in_subprocess(str(script), {"input_mib": 48, "work_mib": 64}, settings)
    assert result["status"] == "ok", result
    # the 48 MiB of inputs are not counted; the 64 MiB the call touches are
    assert 60 <= result["extra_mem_mib"] <= 76, result
    assert abs(result["input_mib"] - 48) < 1e-9


def make_run(tmp_path, budget_s=None):
    run = harness.Run(benchmark="unit", script=__file__, device="cpu", out_dir=str(tmp_path),
                      settings=harness.Settings(), dry_run=True, budget_s=budget_s)
    run.add_section(harness.Section(name="s", title="unit", baseline="ref", x_key="C", panel_keys=("d",),
                                    compare_keys=("C", "d")))
    return run


def test_ratios_against_the_baseline_of_the_same_shape(tmp_path):
    run = make_run(tmp_path)
    base = {"status": "ok", "time_ms": 10.0, "extra_mem_mib": 100.0, "check": {"loss": 2.0}}
    run.add_record("s", {"impl": "ref", "C": 8, "d": 4, "same_math": True}, dict(base))
    run.add_record("s", {"impl": "fast", "C": 8, "d": 4, "same_math": True},
                   {"status": "ok", "time_ms": 5.0, "extra_mem_mib": 10.0, "check": {"loss": 2.002}})
    run.add_record("s", {"impl": "fast", "C": 16, "d": 4, "same_math": True},
                   {"status": "ok", "time_ms": 7.0, "extra_mem_mib": 12.0, "check": {"loss": 1.0}})
    ref, fast, lone = run.records
    assert ref["time_vs_ref"] == 1.0 and ref["check_rel_diff"] == 0.0
    assert fast["time_vs_ref"] == pytest.approx(0.5) and fast["extra_mem_vs_ref"] == pytest.approx(0.1)
    assert fast["check_rel_diff"] == pytest.approx(1e-3)
    assert "time_vs_ref" not in lone  # no baseline measured at C=16
    with open(run.json_path) as f:
        assert len(json.load(f)["results"]) == 3  # written after every case


def test_a_non_finite_check_counts_as_the_worst_difference(tmp_path):
    run = make_run(tmp_path)
    run.add_record("s", {"impl": "ref", "C": 8, "d": 4, "same_math": True},
                   {"status": "ok", "time_ms": 1.0, "check": {"loss": 2.0, "energy": 1.0}})
    run.add_record("s", {"impl": "fast", "C": 8, "d": 4, "same_math": True},
                   {"status": "ok", "time_ms": 1.0, "check": {"loss": 2.0, "energy": None}})  # NaN, sanitised
    assert run.records[1]["check_rel_diff"] == float("inf")
    bench = harness.load_script(os.path.join(BENCH, "bench_centroids.py"))
    assert bench.fastest_validated_impl([dict(run.records[1], section="force")]) is None


def test_a_dot_check_is_measured_against_its_norm(tmp_path):
    """A gradient's dot with a unit direction can be near 0 by chance; its difference counts relative
    to the gradient's norm, not to the tiny dot."""
    run = make_run(tmp_path)
    run.add_record("s", {"impl": "ref", "C": 8, "d": 4, "same_math": True},
                   {"status": "ok", "time_ms": 1.0, "check": {"g_norm": 2.0, "g_dot": 0.001}})
    run.add_record("s", {"impl": "fast", "C": 8, "d": 4, "same_math": True},
                   {"status": "ok", "time_ms": 1.0, "check": {"g_norm": 2.0, "g_dot": 0.003}})
    assert run.records[1]["check_rel_diff"] == pytest.approx(1e-3)


def test_time_budget_skips_the_remaining_cases_with_a_reason(tmp_path):
    run = make_run(tmp_path, budget_s=0.0)
    calls = []
    run.measure("s", [{"impl": "ref", "C": 8, "d": 4}], lambda p: None, str,
                runner=lambda p: calls.append(p) or {"time_ms": 1.0})
    assert not calls
    assert run.records[0]["status"] == "skipped" and "budget" in run.records[0]["reason"]


def test_errors_are_recorded_and_make_the_run_fail(tmp_path, capsys):
    run = make_run(tmp_path)

    def broken(params):
        raise RuntimeError("kernel exploded")

    run.measure("s", [{"impl": "ref", "C": 8, "d": 4}], lambda p: None, str, runner=broken)
    assert run.records[0]["status"] == "error" and "kernel exploded" in run.records[0]["reason"]
    assert run.finish() == 1
    assert os.path.exists(run.png_path)


def test_render_tables_reads_files_and_skips_dry_runs_by_default(tmp_path, capsys):
    run = make_run(tmp_path)
    run.add_record("s", {"impl": "ref", "C": 8, "d": 4}, {"status": "ok", "time_ms": 10.0})
    run.write_json()
    assert render_tables.latest_runs([run.json_path]) == []
    assert len(render_tables.latest_runs([run.json_path], include_dry_run=True)) == 1
    target = tmp_path / "tables.md"
    assert render_tables.main([run.json_path, "-o", str(target)]) == 0
    text = target.read_text()
    assert "DRY RUN" in text and "| 8 |" in text


@pytest.mark.parametrize("method", ["repulsion", "pedcc"])
def test_quality_benchmark_runs_what_generate_centroids_runs(method):
    """The quality benchmark calls the optimisers directly (to record their trajectory): its points
    must be those of the public generate_centroids with the same seed and cap."""
    import torch

    import pedcc_kernels as pk

    bench = harness.load_script(os.path.join(BENCH, "bench_centroids.py"))
    params = dict(method=method, C=40, d=6, device="cpu", seed=5, max_iters=12, time_limit=None, impl=None)
    points, seconds, report = bench.generate(params)
    expected = pk.generate_centroids(40, 6, method=method, seed=5, max_iters=12)
    torch.testing.assert_close(points, expected, rtol=0, atol=1e-6)
    assert report["iterations"] == 12 and seconds > 0 and report["engine"]
    trajectory = report["trajectory"]
    assert trajectory[-1][0] == 12 and all(a[0] < b[0] for a, b in zip(trajectory, trajectory[1:]))


def test_fastest_validated_force_impl_needs_agreement_with_torch():
    bench = harness.load_script(os.path.join(BENCH, "bench_centroids.py"))
    rec = lambda impl, c, ms, diff: dict(section="force", status="ok", impl=impl, C=c, time_ms=ms,  # noqa: E731
                                          check_rel_diff=diff)
    records = [rec("simt", 100, 5.0, 1e-7), rec("tensor_core", 100, 1.0, 0.5), rec("triton", 100, 2.0, 1e-3),
               rec("torch", 100, 3.0, 0.0), rec("simt", 10, 0.1, 1e-7),
               dict(section="force", status="error", impl="op_bf16", C=100)]
    assert bench.fastest_validated_impl(records) == "triton"  # tensor_core is faster but disagrees
    assert bench.fastest_validated_impl([rec("op_bf16", 100, 1.0, 1e-3)]) == "tensor_core"
    assert bench.fastest_validated_impl([rec("torch", 100, 1.0, 0.0)]) is None
    assert bench.fastest_validated_impl(records, among=["simt", "tensor_core"]) == "simt"  # triton failed its tests


def test_autotune_report_reads_choice_and_candidate_timings():
    class FakeAutotuner:  # the two attributes triton.autotune's wrapper fills in
        cache = {(512, 1024): "BLOCK_M: 64"}
        configs_timings = {"BLOCK_M: 64": [1.5, 1.4, 1.6], "BLOCK_M: 128": [float("inf"), 0.0, 0.0]}

    report = harness.autotune_report(FakeAutotuner())
    assert report == {"tuned": {"(512, 1024)": "BLOCK_M: 64"},
                      "candidates_ms": {"BLOCK_M: 64": 1.5, "BLOCK_M: 128": None}}
    # a key tuned before the case (an earlier case in the same process) is not this case's
    assert harness.autotune_report(FakeAutotuner(), harness.autotune_keys(FakeAutotuner())) == \
        {"tuned": {}, "candidates_ms": {}}
    assert harness.autotune_keys(object()) == set()
    assert harness.autotune_report(object()) == {"tuned": {}, "candidates_ms": {}}


def test_trajectory_takes_the_recorded_times():
    bench = harness.load_script(os.path.join(BENCH, "bench_centroids.py"))
    history = [0.5 - 0.001 * i for i in range(100)]
    times = [0.1 * i + (0.05 * (i - 60) if i > 60 else 0.0) for i in range(1, 101)]  # slower after 60
    thinned = bench.thinned_history(history, seconds=12.0, keep=10, times=times)
    assert thinned[-1] == (100, round(times[-1], 2), round(history[-1], 5))
    assert all(t == round(times[i - 1], 2) and h == round(history[i - 1], 5) for i, t, h in thinned)
    even = bench.thinned_history(history, seconds=12.0, keep=10)  # no times: evenly spread
    assert even[-1][1] == 12.0 and even[0][1] == 0.12
