#!/usr/bin/env python3
"""Turns bench/run.sh's (and bench/tls.sh's) raw figures into a markdown table (medians over rounds, and the ratio of
kube-balancer's figure to each peer's), a TSV of the medians, and a gnuplot script for the chart.

usage: report.py META RAW_TSV OUT_PREFIX "BALANCER..."
"""

import os
import re
import statistics
import sys
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NAMES = {
    "kube-balancer": "kube-balancer",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "floor": "floor",
    "apache": "Apache",
}


def name(b):
    """A balancer's name in the tables; NAME:N is NAME with N workers."""
    base, _, workers = b.partition(":")
    label = NAMES.get(base, base)
    return f"{label}, {workers} workers" if workers else label

# (key, label, unit, decimals, better): better is "lower" or "higher".
ROWS = [
    ("cpu_small", "**CPU per request**, keep-alive, 12 B body", "µs", 2, "lower"),
    ("cpu_1k", "CPU per request, 1 KiB body", "µs", 2, "lower"),
    ("cpu_64k", "CPU per request, 64 KiB body", "µs", 2, "lower"),
    ("cpu_close", "CPU per request, new connection each", "µs", 2, "lower"),
    ("cpu_h2", "CPU per request, HTTP/2 clients", "µs", 2, "lower"),
    ("core_small", "pinned core busy per request, 12 B body", "µs", 2, "lower"),
    ("rps_small", "throughput, keep-alive, 12 B body", "req/s", 0, "higher"),
    ("rps_1k", "throughput, 1 KiB body", "req/s", 0, "higher"),
    ("rps_64k", "throughput, 64 KiB body", "req/s", 0, "higher"),
    ("rps_close", "throughput, new connection each", "req/s", 0, "higher"),
    ("rps_h2", "throughput, HTTP/2 clients", "req/s", 0, "higher"),
    ("cpu_hs", "**CPU per full TLS handshake**, a new connection per request", "µs", 2, "lower"),
    ("cpu_tls", "**CPU per request**, TLS keep-alive, 12 B body", "µs", 2, "lower"),
    ("rps_hs", "full TLS handshakes per second", "1/s", 0, "higher"),
    ("rps_tls", "throughput, TLS keep-alive, 12 B body", "req/s", 0, "higher"),
    ("hs_seen", "handshakes the balancer counted per request answered", "", 3, "none"),
    ("hs_resumed", "resumed handshakes (the client's count)", "", 0, "none"),
    ("lat_p50_us", "latency p50 at a fixed rate", "µs", 0, "lower"),
    ("lat_p99_us", "latency p99 at a fixed rate", "µs", 0, "lower"),
    ("lat_p999_us", "latency p99.9 at a fixed rate", "µs", 0, "lower"),
    ("lat_max_us", "latency max at a fixed rate", "µs", 0, "lower"),
    ("cpu_rate", "CPU per request at a fixed rate", "µs", 2, "lower"),
    ("peak_pss_mib", "peak memory under load (PSS)", "MiB", 1, "lower"),
    ("idle_pss_mib", "memory with idle keep-alive connections (PSS)", "MiB", 1, "lower"),
    ("idle_open", "idle connections held", "", 0, "higher"),
    ("idle_kib_per_conn", "**memory per idle keep-alive connection** (PSS growth per connection, fitted over the steps)", "KiB", 3, "lower"),
    ("pooled_kib_per_conn", "**memory per idle pooled member connection** (PSS growth per connection, fitted over the completed steps)", "KiB", 3, "lower"),
]

# Rows of the memory figures' steps, one per count: (key pattern, label, unit, decimals).
STEP_ROWS = [
    (r"idle_pss_(\d+)_mib", "PSS with {n} idle client connections", "MiB", 1),
    (r"idle_open_(\d+)", "idle client connections held, step {n}", "", 0),
    (r"pooled_pss_(\d+)_mib", "PSS after a burst of {n} requests held at the members", "MiB", 1),
    (r"pooled_held_(\d+)", "idle pooled member connections held, step {n}", "", 0),
]

CHART_TESTS = [("small", "12 B"), ("1k", "1 KiB"), ("64k", "64 KiB"), ("close", "new conn"), ("h2", "HTTP/2")]


def main():
    meta_path, raw_path, prefix, balancers = sys.argv[1:5]
    balancers = balancers.split()
    meta = {}
    with open(meta_path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    values = defaultdict(list)
    by_round = defaultdict(dict)
    rounds = set()
    with open(raw_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4 or parts[3] == "":
                continue
            rnd, lb, key, value = parts
            rounds.add(rnd)
            try:
                values[(lb, key)].append(float(value))
                by_round[(lb, key)][rnd] = float(value)
            except ValueError:
                pass
    med = {k: statistics.median(v) for k, v in values.items() if v}

    with open(prefix + ".tsv", "w") as f:
        f.write("balancer\tfigure\tmedian\trounds\n")
        for (lb, key), v in sorted(values.items()):
            f.write(f"{lb}\t{key}\t{med[(lb, key)]:g}\t{' '.join(f'{x:g}' for x in v)}\n")

    me = "kube-balancer"
    peers = [b for b in balancers if b != me]
    # Relative to where this report goes (bench/results/ or its archive/).
    docs = os.path.relpath(os.path.join(REPO, "docs", "benchmarks.md"), os.path.dirname(os.path.abspath(prefix)))
    out = []
    out.append(f"# {meta.get('title', 'kube-balancer side by side')}: {meta.get('date', '')}\n")
    out.append(
        f"Medians of {len(rounds)} round(s). Each balancer: one worker pinned to one CPU; load generator "
        "and the two members on the other CPU; loopback only. How each figure is measured: "
        f"[docs/benchmarks.md]({docs}). Ratios are kube-balancer's figure divided by "
        "the peer's (below 1 is better for CPU, latency and memory; above 1 is better for throughput).\n"
    )
    head = ["figure", "unit"] + [name(b) for b in balancers]
    if me in balancers:
        head += [f"÷ {name(p)}" for p in peers]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
    for key, label, unit, dec, _better in ROWS + step_rows(med):
        if not any((b, key) in med for b in balancers):
            continue
        label_full = label
        if key.startswith("lat_") or key == "cpu_rate":
            label_full += f" ({meta_setting(meta, 'latency at')})"
        if key in ("idle_pss_mib", "idle_open"):
            label_full += f" ({meta_setting(meta, 'idle connections').split(' (')[0]})"
        cells = [label_full, unit]
        for b in balancers:
            v = med.get((b, key))
            cells.append("–" if v is None else fmt(v, dec))
        if me in balancers:
            mine = med.get((me, key))
            for p in peers:
                theirs = med.get((p, key))
                if mine is None or theirs is None or theirs == 0 or key.startswith(("idle_open", "pooled_held", "hs_")):
                    cells.append("–")
                else:
                    cells.append(f"{mine / theirs:.2f}")
        out.append("| " + " | ".join(cells) + " |")
    out.extend(paired_ratios(by_round, me, peers))
    out.extend(workers_table(med, balancers))
    errors = {b: sum(v for (lb, k), vs in values.items() if lb == b and k.startswith(("errors_", "lat_errors")) for v in vs) for b in balancers}
    out.append("")
    out.append("Errors over all runs (socket errors, non-2xx answers): " + ", ".join(f"{name(b)} {int(errors[b])}" for b in balancers) + ".")
    lag = [med.get((b, "lat_max_send_lag_us")) for b in balancers]
    if any(x is not None for x in lag):
        out.append(
            "The latency generator's own worst send lag (how late it sent, already included in the "
            "latencies): " + ", ".join(f"{name(b)} {fmt(x, 0)} µs" for b, x in zip(balancers, lag) if x is not None) + "."
        )
    out.append("")
    out.append("Machine and versions:\n")
    for k in ["cpu", "kernel", "load_before", "load_after", "settings", "wrk", "h2load", "tls"]:
        if k in meta:
            out.append(f"- {k.replace('_', ' ')}: {meta[k]}")
    for b in balancers:
        if f"version_{b}" in meta:
            out.append(f"- {meta[f'version_{b}']}")
    if write_chart(prefix, balancers, med, meta):
        png = prefix.rsplit("/", 1)[-1] + ".png"
        out.append(f"\n![CPU per request and throughput]({png})\n")
    else:
        out.append("")
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(out))


def step_rows(med):
    """A row for each step of the memory figures found in the results, in order of count."""
    rows = []
    for pattern, label, unit, dec in STEP_ROWS:
        counts = sorted({int(m.group(1)) for (_, k) in med for m in [re.fullmatch(pattern, k)] if m})
        key = pattern.replace(r"(\d+)", "{n}")
        rows += [(key.format(n=n), label.format(n=f"{n:,}"), unit, dec, "lower") for n in counts]
    return rows


def workers_table(med, balancers):
    """Each balancer with N workers (NAME:N) next to itself with one: CPU per request and the
    ratio, at the same offered rate (and under the same load generator) for both."""
    pairs = [(b.partition(":")[0], b) for b in balancers if ":" in b and b.partition(":")[0] in balancers]
    if not pairs:
        return []
    keys = [k for k in ("cpu_rate", "cpu_small", "cpu_close") if any((b, k) in med for _, b in pairs)]
    labels = {k: next(label for kk, label, *_ in ROWS if kk == k).replace("**", "") for k in keys}
    rows = [
        "",
        "More workers: each balancer with N workers beside itself with one, in the same run; "
        "CPU per request in µs, and the ratio (N workers ÷ one).",
        "",
        "| balancer | figure | one worker | N workers | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for one, many in pairs:
        for k in keys:
            a, b = med.get((one, k)), med.get((many, k))
            if a is None or b is None or a == 0:
                continue
            rows.append(f"| {name(many)} | {labels[k]} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    return rows


# The figures whose per-round ratios are listed under the table.
PAIRED = [key for key, *_ in ROWS if key.startswith(("cpu_", "rps_"))]


def paired_ratios(by_round, me, peers):
    """The ratio of kube-balancer's figure to each peer's within each round, where both ran
    minutes apart at most. The machine's speed drifts over a run (other work on the host), and
    every balancer's figures drift with it: the median of these ratios is less moved by that
    drift than the ratio of the two medians, and their range shows how far one round can be off.
    """
    rows = []
    for key in PAIRED:
        label = next(label for k, label, *_ in ROWS if k == key).replace("**", "")
        cells, any_pair = [], False
        for p in peers:
            mine, theirs = by_round.get((me, key), {}), by_round.get((p, key), {})
            ratios = sorted(mine[r] / theirs[r] for r in mine if theirs.get(r))
            if len(ratios) < 2:
                cells.append("–")
                continue
            any_pair = True
            cells.append(f"{statistics.median(ratios):.2f} ({ratios[0]:.2f} to {ratios[-1]:.2f})")
        if any_pair:
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        "Round by round: within each round every balancer runs once, minutes apart at most. "
        "kube-balancer's figure divided by the peer's in the same round; the median of those "
        "ratios, and in brackets the lowest and the highest.",
        "",
        "| figure | " + " | ".join(f"÷ {name(p)}" for p in peers) + " |",
        "|---|" + "---:|" * len(peers),
    ] + rows


def meta_setting(meta, word):
    for part in meta.get("settings", "").split(", "):
        if word in part:
            return part
    return ""


def fmt(v, dec):
    if dec == 0:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.{dec}f}"


def write_chart(prefix, balancers, med, meta):
    tests = [(t, label) for t, label in CHART_TESTS if any((b, f"cpu_{t}") in med for b in balancers)]
    if not tests:
        return False
    lines = []
    for kind in ("cpu", "rps"):
        lines.append(f"${kind} << EOD")
        lines.append("test " + " ".join(f'"{name(b)}"' for b in balancers))
        for t, label in tests:
            row = [f'"{label}"'] + [f"{med.get((b, f'{kind}_{t}'), float('nan')):g}" for b in balancers]
            if kind == "rps":
                row = [row[0]] + [f"{float(x) / 1000:g}" for x in row[1:]]
            lines.append(" ".join(row))
        lines.append("EOD")
    n = len(balancers)
    plots = lambda block: ", ".join(
        f"{block} using {i + 2}:xtic(1) title columnheader({i + 2})" for i in range(n)
    )
    png = prefix + ".png"
    script = "\n".join(lines) + f"""
set terminal pngcairo size 1200,520 font "sans,10"
set output "{png}"
set multiplot layout 1,2 title "kube-balancer, nginx, HAProxy, Apache: one worker pinned to one CPU ({meta.get('date', '')})"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top left
set yrange [0:*]
set title "balancer CPU per request (µs, lower is better)"
plot {plots('$cpu')}
set title "throughput (thousand req/s, higher is better)"
plot {plots('$rps')}
unset multiplot
"""
    with open(prefix + ".gp", "w") as f:
        f.write(script)
    return True


if __name__ == "__main__":
    main()
