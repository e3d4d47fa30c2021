"""The PNG of a benchmark result document: time and extra memory against the swept size, one line
per implementation on log-log axes, and grouped bars for centroid quality. Uses matplotlib's Agg
backend (no display)."""

LINE_METRICS = (("time_ms", "time (ms)"), ("extra_mem_mib", "extra memory (MiB)"))
BAR_METRICS = (("max_cos", "max cos (lower is better)"), ("time_s", "time (s)"))


def plot_panels(doc: dict):
    """(section, caption, rows) per plot row: a line panel per value of a timed section's panel keys,
    and one bar panel for a section without a baseline (centroid quality)."""
    panels = []
    for name, section in doc["sections"].items():
        rows = [r for r in doc["results"] if r["section"] == name and r["status"] == "ok"]
        if section["baseline"] is None:
            if rows:
                panels.append((section, "", rows))
            continue
        rows = [r for r in rows if "time_ms" in r]
        keys = sorted({tuple(r.get(k) for k in section["panel_keys"]) for r in rows}, key=str)
        for key in keys:
            panel_rows = [r for r in rows if tuple(r.get(k) for k in section["panel_keys"]) == key]
            caption = ", ".join(f"{k}={v}" for k, v in zip(section["panel_keys"], key))
            panels.append((section, caption, panel_rows))
    return panels


def draw_lines(ax, section, rows, metric):
    """One line per implementation against the section's x key, log-log."""
    for impl in sorted({r["impl"] for r in rows}):
        pts = sorted((r[section["x_key"]], r.get(metric)) for r in rows if r["impl"] == impl)
        pts = [(x, y) for x, y in pts if isinstance(y, (int, float)) and y > 0]
        if pts:
            style = "-o" if impl == section["baseline"] else "-s"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=impl, markersize=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(section["x_key"])


def draw_bars(ax, rows, metric):
    """Grouped bars: one group per (C, d), one bar per method; the bound as a black tick for max cos."""
    shapes = sorted({(r["C"], r["d"]) for r in rows})
    methods = sorted({r["method"] for r in rows})
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        xs, ys = [], []
        for j, shape in enumerate(shapes):
            match = [r for r in rows if (r["C"], r["d"]) == shape and r["method"] == method]
            if match and isinstance(match[0].get(metric), (int, float)):
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(match[0][metric])
        ax.bar(xs, ys, width, label=method)
    if metric == "max_cos":
        for j, shape in enumerate(shapes):
            bound = next((r["bound"] for r in rows if (r["C"], r["d"]) == shape and "bound" in r), None)
            if bound is not None:
                ax.hlines(bound, j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                          label="bound" if j == 0 else None)
    else:
        ax.set_yscale("log")
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels([f"C={c}\nd={d}" for c, d in shapes], fontsize=8)


def plot_sections(doc: dict, path: str):
    """A PNG with one row per panel of plot_panels and two columns (time and memory, or max cos and
    time for the quality bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = plot_panels(doc) or [(None, "no measured case", [])]
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for row, (section, caption, rows) in enumerate(panels):
        bars = section is not None and section["baseline"] is None
        for col, (metric, metric_label) in enumerate(BAR_METRICS if bars else LINE_METRICS):
            ax = axes[row][col]
            if section is None:
                ax.set_axis_off()
                ax.set_title(caption)
                continue
            if bars:
                draw_bars(ax, rows, metric)
            else:
                draw_lines(ax, section, rows, metric)
            ax.set_ylabel(metric_label)
            ax.set_title(section["title"] + (f"\n{caption}" if caption else ""), fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(f"{doc['benchmark']} on {doc['machine_name']}, {doc['machine']['date']}"
                 + (" (dry run)" if doc.get("dry_run") else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
