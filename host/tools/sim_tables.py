#!/usr/bin/env python3
"""Markdown tables of one `anytime-host simulate` run, from its `report.json`.

    python3 host/tools/sim_tables.py target/sim/bench/data/report.json

Prints, per stage and method: accuracy on all labels (seen / unseen where the protocol
has both), the held-out group's accuracy, then the summary (average, final, forgetting,
update time, bytes per sample) and the "none of the above" evaluation where present.
"""

import json
import sys


def fmt(v, nd=1):
    return "–" if v is None else f"{v:.{nd}f}"


def main(path):
    r = json.load(open(path))
    plan, rows = r["plan"], r["rows"]
    stages = [s["name"] for s in plan["stages"]]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    held = [i for i, g in enumerate(plan["groups"]) if g["held_out"]]
    by = {(row["method"], row["stage"]): row for row in rows}
    split = any(row["acc_unseen"] is not None for row in rows)

    print(f"wall {r['wall_s']:.0f} s, peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB")
    print()
    print("Accuracy (%) on all labels after each stage" + (" (seen / unseen)" if split else ""))
    print()
    print("| method | " + " | ".join(stages) + " |")
    print("|---|" + "---:|" * len(stages))
    for m in methods:
        cells = []
        for k in range(len(stages)):
            row = by.get((m, k))
            if row is None:
                cells.append("")
                continue
            c = fmt(row["acc_all"])
            if split:
                c += f" ({fmt(row['acc_seen'])} / {fmt(row['acc_unseen'])})"
            cells.append(c)
        print(f"| {m} | " + " | ".join(cells) + " |")
    for g in held:
        name = plan["groups"][g]["name"]
        print()
        print(f"Held-out {name} (zero-shot retention, %) after each stage")
        print()
        print("| method | " + " | ".join(stages) + " |")
        print("|---|" + "---:|" * len(stages))
        for m in methods:
            cells = [fmt(by[(m, k)]["acc_groups"][g]) if (m, k) in by else ""
                     for k in range(len(stages))]
            print(f"| {m} | " + " | ".join(cells) + " |")
    print()
    print("| method | average | final | final seen | final unseen | forgetting "
          "| ms per update | bytes per sample |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in r["summaries"]:
        ms = s.get("mean_update_ms")
        print(f"| {s['method']} | {fmt(s['average_acc'])} | {fmt(s['final_acc'])} "
              f"| {fmt(s['final_seen'])} | {fmt(s['final_unseen'])} | {fmt(s['forgetting'])} "
              f"| {fmt(ms, 2) if ms and ms > 0.01 else '–'} | {s['bytes_per_sample']:.0f} |")
    nones = [(row["method"], row["stage_name"], n) for row in rows for n in row.get("none") or []]
    if nones:
        print()
        print("None of the above: images of labels not yet learned should be answered "
              "\"none\" (AUROC of the signal, abstention at the CLI's threshold)")
        print()
        print("| method | stage | signal | AUROC | threshold | abstain unlearned % "
              "| abstain learned % | accuracy answered % |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for m, st, n in nones:
            print(f"| {m} | {st} | {n['signal']} | {fmt(n['auroc'], 3)} | {n['threshold']:g} "
                  f"| {fmt(n['abstain_unlearned'])} | {fmt(n['abstain_learned'])} "
                  f"| {fmt(n['acc_answered'])} |")
    claims(r, by, stages, methods, held)


def claims(r, by, stages, methods, held):
    """The paper's claims (issue 22), checked at every stage where the methods ran."""
    print()
    print("Claims, per stage (✓ holds, ✗ fails; the margin in points)")
    print()
    ks = range(len(stages))

    def acc(m, k, key):
        row = by.get((m, k))
        return None if row is None else row[key]

    if {"full", "tuned", "zero-shot"} <= set(methods):
        for key in ["acc_all", "acc_seen", "acc_unseen"]:
            cells = []
            for k in ks:
                f, t, z = acc("full", k, key), acc("tuned", k, key), acc("zero-shot", k, key)
                if None in (f, t, z):
                    cells.append("–")
                    continue
                d = f - max(t, z)
                cells.append(f"{'✓' if d >= -1 else '✗'} {d:+.1f}")
            print(f"1. full ≥ max(zero-shot, tuned) − 1, {key[4:]}: " + ", ".join(cells))
    if {"full", "raw"} <= set(methods):
        cells = []
        for k in ks:
            f, w = acc("full", k, "acc_all"), acc("raw", k, "acc_all")
            d = f - w
            cells.append(f"{'✓' if d >= -1 else '✗'} {d:+.1f}")
        fb = by[("full", len(stages) - 1)]["bytes_per_sample"]
        rb = by[("raw", len(stages) - 1)]["bytes_per_sample"]
        print(f"2. k5/8-bit within 1 point of raw: " + ", ".join(cells)
              + f" ({fb:.0f} vs {rb:.0f} bytes, {100 * fb / rb:.1f} %)")
    for g in held:
        for m in [m for m in methods if m not in ("zero-shot", "ncm")]:
            cells = []
            for k in ks:
                if (m, k) not in by:
                    continue
                d = by[(m, k)]["acc_groups"][g] - by[("zero-shot", k)]["acc_groups"][g]
                cells.append(f"{'✓' if d >= -1 else '✗'} {d:+.1f}")
            print(f"3. held-out ≥ zero-shot − 1, {m}: " + ", ".join(cells))
    if {"full", "ncm", "zero-shot"} <= set(methods):
        k = len(stages) - 1
        f, n = acc("full", k, "acc_all"), acc("ncm", k, "acc_all")
        print(f"4. final: full {f:.1f} vs ncm {n:.1f} ({f - n:+.1f})", end="")
        fu, zu = acc("full", k, "acc_unseen"), acc("zero-shot", k, "acc_unseen")
        for kk in ks:
            if acc("full", kk, "acc_unseen") is not None:
                fu, zu = acc("full", kk, "acc_unseen"), acc("zero-shot", kk, "acc_unseen")
        print("" if fu is None else f"; unseen (last stage with any): full {fu:.1f} vs "
              f"zero-shot {zu:.1f} ({fu - zu:+.1f})")


if __name__ == "__main__":
    main(sys.argv[1])
