#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# The bits-versus-perplexity table and plot of docs/results.md: caldera's pipelines (each run's own
# JSON report and output file) next to llama.cpp's types (the CSV of tools/llama_peers.sh). A
# reference tool, never a build or test dependency; the plot needs gnuplot.
#
#   bits/param (linear)  caldera: the report's summary.bits_per_param (stored bits of the 210
#                        compressed linear weights over their parameters); llama.cpp: the same 210
#                        weights' stored bits from the GGUF's tensor table (tools/gguf_bits.py)
#   bits/param (file)    the whole output file's bits over all the model's parameters (134,515,008
#                        for SmolLM2-135M: the linear weights, the tied embedding, the norms)
#   data-aware           caldera only: the report's mean and worst sqrt(tr(E H Eᵀ)/tr(W H Wᵀ))
#   perplexity           caldera: the pipeline's [eval] (caldera-pipe's runtime); llama.cpp:
#                        llama-perplexity (and caldera-pipe eval where our reader takes the types)
#
# --prior CSV carries rows of an earlier table (the CSV this tool writes, e.g. the one committed
# beside docs/results.md): a method that this run does not give (no report named), or a llama.cpp
# type whose perplexity peers.csv lacks, takes the earlier row's figures, and its `source` column
# says "earlier table" (otherwise it names the report or peers CSV the row comes from). Nothing is
# carried for what this run measures.
#
# usage: results_table.py --peers peers.csv [--prior table.csv] [--csv table.csv] [--json table.json]
#                         [--plot out.png] [--model-params N] [NAME=REPORT.json[:OUTPUT_FILE] ...]
import argparse
import csv
import json
import os
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", required=True)
    ap.add_argument("--plot")
    ap.add_argument("--prior")
    ap.add_argument("--csv")
    ap.add_argument("--json")
    ap.add_argument("--model-params", type=float, default=134515008)
    ap.add_argument("runs", nargs="*")
    a = ap.parse_args()
    rows, orig = [], None
    for spec in a.runs:
        name, rest = spec.split("=", 1)
        rep, _, out = rest.partition(":")
        r = json.load(open(rep))
        s, ev = r["summary"], r.get("eval", {})
        mp = s.get("model_params", a.model_params)
        fb = os.path.getsize(out) * 8 / mp if out and os.path.exists(out) else None
        c, o = ev.get("compressed"), ev.get("original")
        if o and orig is None:
            orig = (o["ppl"], o["ppl_err"])
        rows.append(dict(method=name, kind="caldera", bits=s["bits_per_param"], fbits=fb,
                         dam=s.get("mean_rel_err_h"), daw=s.get("worst_rel_err_h"),
                         ppl=c["ppl"] if c else None, err=c["ppl_err"] if c else None, by="caldera-pipe ([eval])", note="",
                         source=os.path.basename(rep)))
    for p in csv.DictReader(open(a.peers)):
        if p["type"] == "original-f32":
            continue
        done = p["ppl_llama"] not in ("", "-")
        cev = "" if p["ppl_caldera"] in ("", "-") else \
            f"caldera-pipe eval {float(p['ppl_caldera']):.4f} ± {float(p['ppl_caldera_err']):.4f}"
        by = "; ".join(x for x in ("llama-perplexity" if done else "", cev) if x) or "not measured"
        rows.append(dict(method=f"llama.cpp {p['type']}", kind="llama.cpp", bits=float(p["linear_bits"]),
                         fbits=float(p["file_bits"]), dam=None, daw=None,
                         ppl=float(p["ppl_llama"]) if done else None, err=float(p["ppl_llama_err"]) if done else None,
                         by=by, note=p["linear_types"], source=os.path.basename(a.peers), cev=cev))
    if a.prior:
        carry(rows, a.prior)
    rows.sort(key=lambda x: x["bits"])
    if orig is None and a.prior:
        orig = next(((float(p["ppl"]), float(p["ppl_err"])) for p in csv.DictReader(open(a.prior))
                     if p["method"] == "original"), None)
    if a.csv or a.json:
        write_table(rows, orig, a.csv, a.json)
    f = lambda v, d: "-" if v is None else f"{v:.{d}f}"
    print("| method | bits/param (210 linear) | bits/param (whole file) | data-aware mean / worst | perplexity | ± | "
          "evaluator | linear weights' types (llama.cpp) | source |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|")
    if orig:
        print(f"| original (Q4_1 dequantized to f32) | 32 | - | - | {orig[0]:.4f} | {orig[1]:.4f} | caldera-pipe | | |")
    for r in rows:
        da = "-" if r["dam"] is None else f"{r['dam']:.4f} / {r['daw']:.4f}"
        print(f"| {r['method']} | {r['bits']:.4f} | {f(r['fbits'], 4)} | {da} | {f(r['ppl'], 4)} | {f(r['err'], 4)} | "
              f"{r['by']} | {r['note']} | {r['source']} |")
    if a.plot:
        tmp = a.plot + ".d"
        os.makedirs(tmp, exist_ok=True)
        for kind in ("caldera", "llama.cpp"):
            with open(os.path.join(tmp, kind + ".dat"), "w") as d:
                for r in rows:
                    if r["kind"] == kind and r["ppl"] is not None:
                        lab = r["method"].replace("llama.cpp ", "")
                        d.write(f"{r['bits']:.6f} {r['ppl']:.6f} {r['err']:.6f} \"{lab}\"\n")
        gp = (f"set terminal pngcairo noenhanced size 1000,650\nset output '{a.plot}'\n"
              "set xlabel 'bits per weight (the 210 linear weights)'\nset ylabel 'perplexity (WikiText-2, ctx 2048, 20 windows)'\n"
              "set logscale y\nset ytics (10, 15, 20, 25, 30, 40, 50, 70, 100, 150, 200, 300, 500, 1000)\nset grid\nset key top right\nset offsets graph 0.08, graph 0.08, graph 0.1, 0\n"
              f"plot '{tmp}/caldera.dat' using 1:2:3 with yerrorbars pt 7 lc rgb '#1f77b4' title 'caldera', "
              f"'' using 1:2:4 with labels offset 0,1 font ',8' notitle, "
              f"'{tmp}/llama.cpp.dat' using 1:2:3 with yerrorbars pt 5 lc rgb '#d62728' title 'llama.cpp (imatrix)', "
              f"'' using 1:2:4 with labels offset 0,-1 font ',8' notitle")
        top = max([r["ppl"] for r in rows if r["ppl"] is not None] + [orig[0] if orig else 1])
        if orig:   # a dashed line across the whole plot, and the y axis from just below it
            gp = gp.replace("set logscale y\n", f"set logscale y\nset yrange [{orig[0] * 0.85:.4f}:{top * 1.4:.4f}]\n"
                            f"set arrow from graph 0, first {orig[0]:.6f} to graph 1, first {orig[0]:.6f} nohead dt 2 lc rgb 'black'\n"
                            f"set label 'original (f32) {orig[0]:.2f}' at graph 0.02, first {orig[0] * 1.04:.6f} font ',9'\n")
        subprocess.run(["gnuplot"], input=gp + "\n", text=True, check=True)
        for n in ("caldera.dat", "llama.cpp.dat"):
            os.remove(os.path.join(tmp, n))
        os.rmdir(tmp)


FIELDS = ("method", "kind", "bits", "fbits", "dam", "daw", "ppl", "err", "by", "note", "source")


def num(v):
    return None if v in ("", "-", None) else float(v)


def carry(rows, path):
    """Fill what this run lacks from an earlier table (see the header)."""
    have = {r["method"]: r for r in rows}
    for p in csv.DictReader(open(path)):
        if p["method"] == "original":
            continue
        r = have.get(p["method"])
        if r is None:   # a method this run does not give: the earlier row whole
            r = dict(method=p["method"], kind=p["kind"], bits=float(p["bits"]), fbits=num(p["fbits"]),
                     dam=num(p["dam"]), daw=num(p["daw"]), ppl=num(p["ppl"]), err=num(p["err"]), by=p["by"],
                     note=p["note"], source="earlier table")
            rows.append(r)
            have[r["method"]] = r
        elif r["ppl"] is None and num(p["ppl"]) is not None:   # bits of this run, perplexity of the earlier one
            by = "; ".join(x for x in (p["by"].split(";")[0], r.get("cev", "")) if x)
            r.update(ppl=num(p["ppl"]), err=num(p["err"]), by=by, source="earlier table (perplexity)")


def write_table(rows, orig, path_csv, path_json):
    out = [dict(method="original", kind="original", bits=32.0, fbits=None, dam=None, daw=None, ppl=orig[0],
                err=orig[1], by="caldera-pipe", note="", source="")] if orig else []
    out += [{k: r[k] for k in FIELDS} for r in rows]
    if path_csv:
        with open(path_csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
            w.writeheader()
            for r in out:
                w.writerow({k: "-" if r[k] is None else r[k] for k in FIELDS})
    if path_json:
        with open(path_json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
