"""The load-test report: ``report.html`` (self-contained) plus its PNG plots.

Plots (matplotlib, Agg backend): throughput over time, p50/p95/p99 over time,
latency vs load (users), failures by status code, and the server's own view
(inferences/s, mean batch size, queue time) when its metrics were scraped.
Latencies come from the sub-millisecond histograms the locustfile records
(successful requests); Locust's own CSV summary is shown beside them.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchwire.loadtest.latency import Histogram, LatencyRecorder, WindowStats
from batchwire.loadtest.metrics import DURATION_COUNTERS, ServerView
from batchwire.loadtest.slo import PERCENTILE_KEYS, Evaluation, SLOSpec

PLOTS = {
    "throughput": "throughput.png",
    "latency": "latency_over_time.png",
    "load": "latency_vs_load.png",
    "failures": "failures_by_status.png",
    "server": "server_metrics.png",
}


@dataclass
class RunInfo:
    """What was run, for the report header."""

    target: str
    models: list[str]
    mode: str
    users: int
    spawn_rate: float
    duration_s: float
    warmup_s: float
    workers: int
    slo_source: str
    server: str  # "started by batchwire loadtest" or "given with --host"
    command: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _user_counts(recorder: LatencyRecorder, history: list[dict[str, str]]) -> dict[int, int]:
    if recorder.users:
        return dict(recorder.users)
    counts: dict[int, int] = {}
    for row in history:
        try:
            counts[int(float(row["Timestamp"]))] = int(float(row["User Count"]))
        except (KeyError, ValueError):
            continue
    return counts


def _users_at(counts: dict[int, int], second: int) -> int | None:
    if not counts:
        return None
    if second in counts:
        return counts[second]
    earlier = [s for s in counts if s <= second]
    return counts[max(earlier)] if earlier else counts[min(counts)]


# Plots ---------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _rates(
    recorder: LatencyRecorder, names: Sequence[str], count: Callable[[WindowStats], int]
) -> list[tuple[float, float]]:
    """(mid-second time, events/s) per second; the partial first and last seconds
    of the run are scaled by the part of them the run covered."""
    start, stop = recorder.start_time, recorder.stop_time
    points = []
    for second, window in recorder.timeline(names):
        lo = max(second, start) if start else second
        hi = min(second + 1, stop) if stop else second + 1
        if hi - lo < 0.25:
            continue  # too little of this second to give a meaningful rate
        points.append(((lo + hi) / 2, count(window) / (hi - lo)))
    return points


def plot_throughput(
    recorder: LatencyRecorder, models: Sequence[str], users: dict[int, int], t0: float, path: Path
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for model in models:
        points = _rates(recorder, [model], lambda w: w.successes)
        if points:
            ax.plot([x - t0 for x, _ in points], [y for _, y in points], label=f"{model} ok/s")
    failed = _rates(recorder, models, lambda w: w.failed)
    if any(y for _, y in failed):
        ax.plot([x - t0 for x, _ in failed], [y for _, y in failed], "r--", label="failures/s")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("requests completed per second")
    ax.set_title("Throughput over time")
    ax.grid(alpha=0.3)
    if users:
        ax2 = ax.twinx()
        seconds = sorted(users)
        ax2.step(
            [max(s - t0, 0.0) for s in seconds],
            [users[s] for s in seconds],
            "k:",
            where="post",
            label="users",
        )
        ax2.set_ylabel("users")
        ax2.set_ylim(bottom=0)
        lines, labels = ax.get_legend_handles_labels()
        lines2, labels2 = ax2.get_legend_handles_labels()
        ax.legend(lines + lines2, labels + labels2, loc="upper left", fontsize="small")
    else:
        ax.legend(loc="upper left", fontsize="small")
    ax.set_ylim(bottom=0)
    return _save(fig, path)


def plot_latency_over_time(
    recorder: LatencyRecorder, models: Sequence[str], spec: SLOSpec | None, t0: float, path: Path
) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(models), 1, figsize=(10, 2.8 * len(models) + 0.6), squeeze=False, sharex=True
    )
    for ax, model in zip(axes[:, 0], models, strict=True):
        series = [(s, w) for s, w in recorder.timeline([model]) if w.successes]
        xs = [s + 0.5 - t0 for s, _ in series]
        for fraction, style in ((0.5, "-"), (0.95, "--"), (0.99, ":")):
            label = f"p{round(fraction * 100)}"
            ax.plot(xs, [w.latency.percentile_ms(fraction) for _, w in series], style, label=label)
        targets = spec.models.get(model) if spec else None
        if targets:
            for key, value in targets.latency_ms.items():
                if key in ("p50_ms", "p95_ms", "p99_ms"):
                    ax.axhline(value, color="grey", linewidth=0.8, linestyle="-.")
                    ax.annotate(
                        f"target {PERCENTILE_KEYS[key][1]} {value:g} ms",
                        (0, value),
                        xycoords=("axes fraction", "data"),
                        fontsize="x-small",
                        color="grey",
                        va="bottom",
                    )
        ax.set_title(f"{model}: latency per second (successful requests)")
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel("seconds since start")
    return _save(fig, path)


def plot_latency_vs_load(
    recorder: LatencyRecorder, models: Sequence[str], users: dict[int, int], path: Path
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    plotted = False
    for model in models:
        by_users: dict[int, Histogram] = defaultdict(Histogram)
        for second, window in recorder.timeline([model]):
            count = _users_at(users, second)
            if count is not None and window.successes:
                by_users[count].merge(window.latency)
        levels = sorted(by_users)
        if not levels:
            continue
        plotted = True
        for fraction, marker in ((0.5, "o-"), (0.95, "s--"), (0.99, "^:")):
            ax.plot(
                levels,
                [by_users[u].percentile_ms(fraction) for u in levels],
                marker,
                label=f"{model} p{round(fraction * 100)}",
            )
    if not plotted:
        ax.text(
            0.5, 0.5, "no user counts recorded", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency vs load")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


def failures_by_status(
    recorder: LatencyRecorder, models: Sequence[str], since: float | None = None
) -> dict[str, dict[str, int]]:
    """model -> status code name -> count."""
    return {model: dict(recorder.window([model], since=since).failures) for model in models}


def plot_failures(failures: dict[str, dict[str, int]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    codes = sorted({code for per_model in failures.values() for code in per_model})
    if not codes:
        ax.text(
            0.5,
            0.5,
            "no failures",
            ha="center",
            va="center",
            fontsize=16,
            color="green",
            transform=ax.transAxes,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        bottom = [0] * len(codes)
        for model, per_model in failures.items():
            heights = [per_model.get(code, 0) for code in codes]
            if any(heights):
                ax.bar(codes, heights, bottom=bottom, label=model)
                bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_ylabel("failed requests")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3, axis="y")
    ax.set_title("Failures by gRPC status code")
    return _save(fig, path)


def plot_server(view: ServerView, t0: float, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for model, points in sorted(view.series.items()):
        xs = [p[0] - t0 for p in points]
        axes[0].plot(xs, [p[1] for p in points], label=model)
        axes[1].plot(xs, [p[2] if p[2] is not None else math.nan for p in points], label=model)
        axes[2].plot(
            xs, [p[3] / 1000 if p[3] is not None else math.nan for p in points], label=model
        )
    axes[0].set_ylabel("inferences/s")
    axes[0].set_title("Server view (scraped Prometheus metrics)")
    axes[1].set_ylabel("mean batch size")
    axes[2].set_ylabel("mean queue time (ms)")
    axes[2].set_xlabel("seconds since start")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    return _save(fig, path)


# HTML ------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.l, th.l { text-align: left; }
.pass { color: #126b12; font-weight: bold; }
.fail { color: #b00020; font-weight: bold; }
.verdict { font-size: 1.4em; padding: 0.4em 0.8em; display: inline-block; border-radius: 4px; }
.verdict.pass { background: #e3f5e3; } .verdict.fail { background: #fde7ea; }
img.plot { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0 1.5em; }
.note { color: #666; font-size: 0.9em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(
        f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>' for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = "l" if i < left else ""
            if isinstance(cell, tuple):  # (text, css class) for pre-marked cells
                text, extra = cell
                cells.append(f'<td class="{cls} {extra}">{_esc(text)}</td>')
            else:
                cells.append(f'<td class="{cls}">{_esc(cell)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _csv_cell(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.0f}" if value == int(value) or value >= 100 else f"{value:.1f}"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="plot" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def write_report(
    out: Path,
    *,
    info: RunInfo,
    recorder: LatencyRecorder,
    evaluation: Evaluation,
    spec: SLOSpec,
    server: ServerView,
    locust_csv_prefix: Path,
) -> Path:
    """Write the PNGs and ``report.html`` into ``out``; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    models = info.models
    t0 = recorder.start_time or evaluation.window_start
    history = read_csv(Path(f"{locust_csv_prefix}_stats_history.csv"))
    users = _user_counts(recorder, history)
    plots: dict[str, Path] = {
        "throughput": plot_throughput(recorder, models, users, t0, out / PLOTS["throughput"]),
        "latency": plot_latency_over_time(recorder, models, spec, t0, out / PLOTS["latency"]),
        "load": plot_latency_vs_load(recorder, models, users, out / PLOTS["load"]),
        "failures": plot_failures(failures_by_status(recorder, models), out / PLOTS["failures"]),
    }
    if server.available:
        plots["server"] = plot_server(server, t0, out / PLOTS["server"])

    verdict = "PASS" if evaluation.passed else "FAIL"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>batchwire load test: {verdict}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>batchwire load test</h1>",
        f'<p><span class="verdict {verdict.lower()}" id="verdict">{verdict}</span></p>',
    ]
    # Settings
    window = evaluation.window_end - evaluation.window_start
    settings_rows = [
        ("target", info.target),
        ("server", info.server),
        ("models", ", ".join(models)),
        ("mode", info.mode),
        ("users / spawn rate", f"{info.users} / {info.spawn_rate:g} per s"),
        ("duration", f"{info.duration_s:g} s"),
        ("SLO window", f"{window:.1f} s (the first {info.warmup_s:.1f} s left out as warm-up)"),
        (
            "Locust processes",
            f"master + {info.workers} workers" if info.workers else "1 (standalone)",
        ),
        ("SLO file", info.slo_source),
        *info.extra.items(),
    ]
    if info.command:
        settings_rows.append(("command", info.command))
    parts.append("<h2>Run</h2>")
    parts.append(_table(["setting", "value"], settings_rows, left=2))

    # SLO results
    parts.append("<h2>Latency targets</h2>")
    slo_rows = []
    for result in evaluation.results:
        if not result.checks:
            slo_rows.append((result.model, "(no targets)", "", "", ("-", "")))
        for check in result.checks:
            slo_rows.append(
                (
                    check.model,
                    check.metric,
                    check.target_text(),
                    check.measured_text(),
                    ("PASS", "pass") if check.passed else ("FAIL", "fail"),
                )
            )
    for model in evaluation.skipped:
        slo_rows.append((model, "(not in this run)", "", "", ("SKIP", "")))
    parts.append(_table(["model", "metric", "target", "measured", "result"], slo_rows, left=2))

    # Per-model measurements
    parts.append("<h2>Measured (SLO window, successful requests)</h2>")
    rows = []
    for result in evaluation.results:
        h = result.stats.latency
        rows.append(
            (
                result.model,
                result.stats.requests,
                result.stats.failed,
                f"{result.rps:.1f}",
                _ms(h.mean_ms()),
                _ms(h.percentile_ms(0.5)),
                _ms(h.percentile_ms(0.9)),
                _ms(h.percentile_ms(0.95)),
                _ms(h.percentile_ms(0.99)),
                _ms(h.percentile_ms(1.0)),
            )
        )
    parts.append(
        _table(
            [
                "model",
                "requests",
                "failures",
                "req/s",
                "mean ms",
                "p50",
                "p90",
                "p95",
                "p99",
                "max",
            ],
            rows,
        )
    )
    parts.append(
        '<p class="note">Latencies: client-side, from send to response, recorded per request by the '
        "locustfile in microsecond buckets (3 significant digits).</p>"
    )

    # Plots
    captions = {
        "throughput": "Throughput over time",
        "latency": "p50 / p95 / p99 over time",
        "load": "Latency vs load",
        "failures": "Failures by status code",
    }
    for key, caption in captions.items():
        parts.append(f"<h2>{caption}</h2>")
        parts.append(_img(plots[key], caption))

    # Server view
    parts.append('<h2 id="server">Server view</h2>')
    if server.available:
        srows = []
        for model, mv in sorted(server.models.items()):
            srows.append(
                (
                    model,
                    f"{mv.inferences:.0f}",
                    f"{mv.executions:.0f}",
                    f"{mv.mean_batch:.2f}" if mv.mean_batch is not None else "n/a",
                    f"{mv.batch_size_mean:.2f}" if mv.batch_size_mean is not None else "n/a",
                    f"{mv.successes:.0f}" if mv.successes is not None else "n/a",
                    f"{mv.failures:.0f}" if mv.failures is not None else "n/a",
                    *(
                        _ms(mv.mean_us[name] / 1000) if name in mv.mean_us else "n/a"
                        for name in DURATION_COUNTERS[:2]
                    ),
                )
            )
        parts.append(
            _table(
                [
                    "model",
                    "inferences",
                    "executions",
                    "count / exec",
                    "batchwire_batch_size mean",
                    "requests ok",
                    "requests failed",
                    "mean request ms",
                    "mean queue ms",
                ],
                srows,
            )
        )
        parts.append(_img(plots["server"], "Server view"))
        parts.append(
            f'<p class="note">Deltas between the first and last scrape '
            f"({(server.end or 0) - (server.start or 0):.1f} s apart), which bracket the load.</p>"
        )
    else:
        parts.append(
            f'<p id="server-unavailable">server metrics not available: {_esc(server.reason or "unknown reason")}</p>'
        )

    # Locust's own view
    stats_rows = read_csv(Path(f"{locust_csv_prefix}_stats.csv"))
    if stats_rows:
        parts.append("<h2>Locust summary (whole run, whole-millisecond resolution)</h2>")
        keys = [
            "Type",
            "Name",
            "Request Count",
            "Failure Count",
            "Requests/s",
            "50%",
            "95%",
            "99%",
            "Max Response Time",
        ]
        summary = [[_csv_cell(row.get(key, "")) for key in keys] for row in stats_rows]
        parts.append(_table(keys, summary, left=2))
    failure_rows = read_csv(Path(f"{locust_csv_prefix}_failures.csv"))
    if failure_rows:
        parts.append("<h2>Failure messages</h2>")
        failures = [
            (r.get("Name", ""), r.get("Error", ""), r.get("Occurrences", ""))
            for r in failure_rows[:50]
        ]
        parts.append(_table(["name", "error", "occurrences"], failures, left=2))
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
