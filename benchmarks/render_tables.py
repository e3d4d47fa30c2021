"""Markdown tables for the README from benchmark result files, so that every number it shows is
backed by a committed JSON file.

    python benchmarks/render_tables.py                      # latest real run per benchmark and machine
    python benchmarks/render_tables.py FILE.json ... -o results.md
    python benchmarks/render_tables.py --summary FILE.json  # the rows at the largest size only

Without files named, dry runs are left out unless --include-dry-run is given.
"""
import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import REPO_ROOT, RESULTS_DIR  # noqa: E402

# (header, record key, format) per section; a missing value prints as "-".
COLUMNS = {
    "loss": [("N", "N", "{}"), ("C", "C", "{}"), ("d", "d", "{}"), ("dtype", "dtype", "{}"),
             ("grads", "grad", "d{}"), ("implementation", "impl", "{}"), ("time (ms)", "time_ms", "{:.3g}"),
             ("× ref", "time_vs_ref", "{:.2f}"), ("extra mem (MiB)", "extra_mem_mib", "{:.4g}"),
             ("× ref", "extra_mem_vs_ref", "{:.3f}"), ("TFLOP/s", "tflops", "{:.3g}"),
             ("1st call (s)", "first_call_s", "{:.2g}"), ("rel. diff", "check_rel_diff", "{:.0e}")],
    "force": [("C", "C", "{}"), ("d", "d", "{}"), ("potential", "potential", "{}"),
              ("implementation", "impl", "{}"), ("time (ms)", "time_ms", "{:.4g}"),
              ("× torch", "time_vs_ref", "{:.2f}"), ("extra mem (MiB)", "extra_mem_mib", "{:.4g}"),
              ("× torch", "extra_mem_vs_ref", "{:.3f}"), ("TFLOP/s", "tflops", "{:.3g}"),
              ("rel. diff", "check_rel_diff", "{:.0e}")],
    "quality": [("C", "C", "{}"), ("d", "d", "{}"), ("method", "method", "{}"), ("max cos", "max_cos", "{:.4f}"),
                ("bound", "bound", "{:.4f}"), ("min dist", "min_dist", "{:.4f}"), ("time (s)", "time_s", "{:.3g}"),
                ("iterations", "iterations", "{}"), ("cap", "max_iters", "{}"), ("stopped by", "stop_reason", "{}"),
                ("force impl", "impl", "{}"), ("engine", "engine", "{}")],
}
LEGEND = {
    "loss": "time: median of the repeats of forward + backward; extra mem: peak minus inputs; × ref: ratio "
            "to the eager reference on the same shape in the same run; TFLOP/s: the GEMM work "
            "(4·N·C·d for dx, 6·N·C·d with dW) over the time; rel. diff: largest relative difference of "
            "the loss and gradient checks against the reference (same math only); 1st call: the first "
            "call's wall time (compilation, autotuning).",
    "force": "one evaluation of the N-body forces; × torch: ratio to chunked torch matmuls on the same shape; "
             "TFLOP/s: 4·C²·d over the time; rel. diff: of the force norm and max cos against torch.",
    "quality": "max cos: largest cosine between two centroids (lower is better); bound: best known lower "
               "bound on it; time: generation wall time; force impl: the impl asked for (- : the device's "
               "default); engine: the force function that ran (op:<impl>, triton, or torch when the "
               "extension was missing; 'A, then B': the repulsion's end phase switched to B).",
}


def cell(record, key, fmt):
    value = record.get(key)
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def describe(doc) -> str:
    m = doc["machine"]
    versions = f"torch {m.get('torch')}" + (f", triton {m['triton']}" if m.get("triton") else "")
    if m.get("cuda") and m.get("gpu"):
        versions += f", CUDA {m['cuda']}"
    if m.get("cublas_tflops"):
        versions += "; cuBLAS " + ", ".join(f"{k} {v:g}" for k, v in m["cublas_tflops"].items()) + " TFLOP/s"
    load = m.get("load_avg_start")
    load_text = f", load avg at start {load[0]:.2f}" if load else ""
    dry = " — DRY RUN (tiny shapes, not a measurement)" if doc.get("dry_run") else ""
    return (f"{doc['machine_name']}, {m.get('date')} ({versions}; commit {m.get('git_commit')}{load_text}; "
            f"{doc['settings']['warmup']} warm-up, median of up to {doc['settings']['repeats']} repeats){dry}")


def table(rows, columns) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r, k, f) for _, k, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def largest_only(rows, section):
    """The rows at the largest value of the section's x key, per panel."""
    x = section["x_key"]
    best = {}
    for r in rows:
        key = tuple(r.get(k) for k in section["panel_keys"])
        best[key] = max(best.get(key, r[x]), r[x])
    return [r for r in rows if r[x] == best[tuple(r.get(k) for k in section["panel_keys"])]]


def sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def ordered(rows, section):
    """Rows grouped by panel, then by the swept size; the measured order within a shape is kept."""
    return sorted(rows, key=lambda r: ([sort_key(r.get(k)) for k in section["panel_keys"]],
                                       sort_key(r.get(section["x_key"]))))


def render_document(doc, summary=False) -> str:
    """Markdown for one result file: a heading with machine and date, then one table per section."""
    parts = [f"#### {doc['benchmark']}: {describe(doc)}"]
    if doc.get("note"):  # added to a committed file by hand: how the run came about, what went wrong
        parts.append(f"> {doc['note']}")
    for name, section in doc["sections"].items():
        rows = [r for r in doc["results"] if r["section"] == name]
        measured = [r for r in rows if r["status"] == "ok"]
        if summary and name in ("loss", "force"):
            measured = largest_only(measured, section)
        measured = ordered(measured, section)
        parts.append(f"**{section['title']}**" + (" (largest size)" if summary and name != "quality" else ""))
        if measured:
            parts.append(table(measured, COLUMNS.get(name, COLUMNS["loss"])))
            if not summary:
                parts.append("_" + LEGEND.get(name, "") + "_")
        else:
            parts.append("(no case measured)")
        skipped = {}
        notes = []
        for r in rows:
            if r["status"] != "ok":
                what = r.get("impl") or r.get("method")
                skipped.setdefault((what, r["status"], r.get("reason", "")), 0)
                skipped[(what, r["status"], r.get("reason", ""))] += 1
        for (what, status, reason), count in sorted(skipped.items(), key=str):
            notes.append(f"- {what}: {status} ({count} case{'s' if count > 1 else ''}): {reason}")
        if notes:
            parts.append("\n".join(notes))
    return "\n\n".join(parts)


def latest_runs(paths, include_dry_run=False):
    """Of the result files, the latest run per (benchmark, machine), dry runs left out by default."""
    chosen = {}
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("dry_run") and not include_dry_run:
            continue
        key = (doc["benchmark"], doc["machine_name"])
        stamp = doc["machine"].get("started_utc", "")
        if key not in chosen or stamp > chosen[key][0]:
            chosen[key] = (stamp, path, doc)
    return [(p, d) for _, p, d in sorted(chosen.values(), key=lambda t: (t[2]["benchmark"], t[1]))]


def source_name(path) -> str:
    """The file's path relative to the repository when it lies inside it, else its name."""
    full = os.path.abspath(path)
    return os.path.relpath(full, REPO_ROOT) if full.startswith(REPO_ROOT + os.sep) else os.path.basename(full)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help=f"result JSON files (default: {RESULTS_DIR}/*.json)")
    parser.add_argument("-o", "--output", help="write the markdown here instead of stdout")
    parser.add_argument("--summary", action="store_true", help="only the rows at the largest size")
    parser.add_argument("--include-dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.files:
        docs = []
        for path in args.files:
            with open(path) as f:
                docs.append((path, json.load(f)))
    else:
        docs = latest_runs(sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json"))), args.include_dry_run)
    if not docs:
        print("no result files to render", file=sys.stderr)
        return 1
    text = "\n\n".join(render_document(doc, summary=args.summary) + f"\n\n<sub>source: {source_name(path)}</sub>"
                       for path, doc in docs) + "\n"
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
