#!/usr/bin/env python3
"""Medians of the load bench's runs, and a plot of how cost grows with the subscriber count.

Reads the JSON lines the load generator (benches/tools) printed into benches/results/*.jsonl
(written by benches/run-load.sh), prints one Markdown table per results file with the median of
the runs of each configuration, and writes benches/results/scaling.svg: p99 latency and server
CPU per delivery against the number of subscribers (from subs.jsonl), one line per server.

    python3 benches/plot.py [RESULTS_DIR] [--since UNIX_TIME] [--tag TAG]

Only the Python standard library is used.
"""

import json
import math
import statistics
import sys
from pathlib import Path


def load(directory, since=None, tag=None):
    runs = {}
    for path in sorted(Path(directory).glob("*.jsonl")):
        rows = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if row.get("scenario") == "compare":
                continue
            if since is not None and row.get("unix_time", 0) < since:
                continue
            if tag is not None and (row.get("label") or "") != tag:
                continue
            rows.append(row)
        if rows:
            runs[path.stem] = rows
    return runs


def server_name(row):
    name = row.get("server", "?").split(":")[0]
    args = " ".join((row.get("server_args") or []) + (row.get("server_env") or []))
    return f"{name} {args}".strip()


def key(row):
    return (
        server_name(row),
        row.get("scenario"),
        row.get("instances"),
        row.get("subscribers"),
        row.get("topics"),
        row.get("events"),
        row.get("rate"),
    )


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rows):
    groups = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    out = []
    for k, group in groups.items():
        lat = lambda q: median([(r.get("latency_us") or {}).get(q) for r in group])
        out.append(
            {
                "server": k[0],
                "scenario": k[1],
                "instances": k[2],
                "subscribers": k[3],
                "topics": k[4],
                "events": k[5],
                "rate": k[6],
                "runs": len(group),
                "cpu_us": median([r.get("cpu_us_per_delivery") for r in group]),
                "cpu_all": [r.get("cpu_us_per_delivery") for r in group],
                "p50_ms": ms(lat("p50")),
                "p99_ms": ms(lat("p99")),
                "p99_all": [ms((r.get("latency_us") or {}).get("p99")) for r in group],
                "max_ms": ms(lat("max")),
                "missing": sum(r.get("missing") or 0 for r in group),
                "duplicate": sum(r.get("duplicate") or 0 for r in group),
                "out_of_order": sum(r.get("out_of_order") or 0 for r in group),
                "rss_kib": kib(median([r.get("rss_per_conn_bytes") for r in group])),
                "rss_all": [kib(r.get("rss_per_conn_bytes")) for r in group],
                "deliveries_per_s": median([r.get("deliveries_per_s") for r in group]),
                "loadgen_cpu": median([r.get("loadgen_cpu_s") for r in group]),
                "resumed": sum(r.get("resumed") or 0 for r in group),
                "reset": sum(r.get("reset") or 0 for r in group),
            }
        )
    out.sort(key=lambda s: (s["scenario"] or "", s["subscribers"] or 0, s["topics"] or 0, s["server"]))
    return out


def ms(us):
    return None if us is None else us / 1000.0


def kib(b):
    return None if b is None else b / 1024.0


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(name, summaries):
    idle = all(s["scenario"] == "idle" for s in summaries)
    print(f"\n### {name}\n")
    if idle:
        print("| server | connections | RSS per connection, KiB (median) | runs (KiB) |")
        print("| --- | ---: | ---: | --- |")
        for s in summaries:
            runs = ", ".join(fmt(v, 1) for v in s["rss_all"])
            print(f"| {s['server']} | {s['subscribers']} | {fmt(s['rss_kib'], 1)} | {runs} |")
        return
    print(
        "| server | scenario | subs | topics | events @ rate | CPU µs/delivery (median) | runs | "
        "p50 ms | p99 ms (median) | runs | max ms | missing | dup | ooo | deliveries/s |"
    )
    print("| --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for s in summaries:
        cpu_runs = ", ".join(fmt(v) for v in s["cpu_all"])
        p99_runs = ", ".join(fmt(v, 1) for v in s["p99_all"])
        print(
            f"| {s['server']} | {s['scenario']} | {s['subscribers']} | {s['topics']} | "
            f"{s['events']} @ {fmt(s['rate'], 0)}/s | {fmt(s['cpu_us'])} | {cpu_runs} | "
            f"{fmt(s['p50_ms'], 1)} | {fmt(s['p99_ms'], 1)} | {p99_runs} | {fmt(s['max_ms'], 1)} | "
            f"{s['missing']} | {s['duplicate']} | {s['out_of_order']} | "
            f"{fmt(s['deliveries_per_s'], 0)} |"
        )


# ---- SVG ------------------------------------------------------------------------------------

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_max(v):
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def panel(x0, y0, w, h, title, ylabel, series, xs):
    """One chart: `series` maps a name to [(x, y)], x on a log scale over `xs`."""
    parts = []
    left, bottom = x0 + 60, y0 + h - 40
    top, right = y0 + 30, x0 + w - 20
    ys = [y for pts in series.values() for _, y in pts if y is not None]
    ymax = nice_max(max(ys) * 1.1 if ys else 1.0)
    lx = [math.log10(x) for x in xs]
    xmin, xmax = min(lx) - 0.15, max(lx) + 0.15

    def px(x):
        return left + (math.log10(x) - xmin) / (xmax - xmin) * (right - left)

    def py(y):
        return bottom - y / ymax * (bottom - top)

    parts.append(f'<text x="{x0 + w / 2}" y="{y0 + 18}" text-anchor="middle" font-size="14" font-weight="bold">{esc(title)}</text>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>')
    for i in range(6):
        y = ymax * i / 5
        parts.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{right}" y2="{py(y):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="11">{y:g}</text>')
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11">{x}</text>')
    parts.append(f'<text x="{(left + right) / 2}" y="{bottom + 34}" text-anchor="middle" font-size="12">subscribers (log scale)</text>')
    parts.append(
        f'<text x="{x0 + 16}" y="{(top + bottom) / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 {x0 + 16} {(top + bottom) / 2})">{esc(ylabel)}</text>'
    )
    for i, (name, pts) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        pts = [(x, y) for x, y in sorted(pts) if y is not None]
        if not pts:
            continue
        path = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(pts))
        parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"/>')
            dy = -6 if i % 2 == 0 else 14
            parts.append(f'<text x="{px(x) + 6:.1f}" y="{py(y) + dy:.1f}" font-size="10" fill="{color}">{y:.2f}</text>')
        ly = top + 4 + i * 16
        parts.append(f'<rect x="{right - 150}" y="{ly}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{right - 135}" y="{ly + 9}" font-size="11">{esc(name)}</text>')
    return parts


def plot(summaries, out):
    cpu, p99 = {}, {}
    for s in summaries:
        if s["scenario"] != "fanout":
            continue
        cpu.setdefault(s["server"], []).append((s["subscribers"], s["cpu_us"]))
        p99.setdefault(s["server"], []).append((s["subscribers"], s["p99_ms"]))
    xs = sorted({s["subscribers"] for s in summaries if s["scenario"] == "fanout"})
    if not xs:
        return False
    w, h = 520, 340
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 30}" '
        f'font-family="sans-serif">',
        f'<rect width="{2 * w}" height="{h + 30}" fill="white"/>',
    ]
    parts += panel(0, 0, w, h, "p99 publish-to-receive latency", "ms", p99, xs)
    parts += panel(w, 0, w, h, "server CPU per delivered event", "µs", cpu, xs)
    parts.append(
        f'<text x="{w}" y="{h + 20}" text-anchor="middle" font-size="11" fill="#555">'
        "2 instances, one topic, 50 000 deliveries/s (250, 25, 5 events/s), 3 s each; medians of the runs"
        "</text>"
    )
    parts.append("</svg>")
    Path(out).write_text("\n".join(parts) + "\n")
    return True


def main(argv):
    directory = "benches/results"
    since = tag = None
    args = iter(argv)
    for a in args:
        if a == "--since":
            since = int(next(args))
        elif a == "--tag":
            tag = next(args)
        else:
            directory = a
    runs = load(directory, since, tag)
    if not runs:
        print(f"no results in {directory}", file=sys.stderr)
        return 1
    for name, rows in runs.items():
        table(name, summarize(rows))
    if "subs" in runs:
        out = Path(directory) / "scaling.svg"
        if plot(summarize(runs["subs"]), out):
            print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
