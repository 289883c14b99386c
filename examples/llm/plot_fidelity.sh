#!/bin/sh
# Plots argmax agreement and decode NLL against the token budget for each selection method,
# from the JSON lines of an `llm eval` sweep (needs python3 and gnuplot: apt-get install
# gnuplot-nox). The checked-in picture:
#   sh examples/llm/plot_fidelity.sh docs/results/2026-12-07/sweep_dense_prefill.jsonl docs/fidelity.png
set -eu
[ $# -eq 2 ] || { echo "usage: sh examples/llm/plot_fidelity.sh SWEEP.jsonl OUT.png" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "gnuplot is missing: apt-get install gnuplot-nox" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# one data file per method: budget (k, or the store's budget), agreement, decode NLL
python3 - "$1" "$tmp" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
series, dense = {}, None
for r in rows:
    name = r["config"]
    if name == "dense":
        dense = r["decode_nll_per_token"]
        continue
    method, size = name.rsplit("_", 1)
    series.setdefault(method, []).append((int(size[1:]), r["argmax_agreement"],
                                          r["decode_nll_per_token"]))
with open(sys.argv[2] + "/methods", "w") as f:
    for method, pts in series.items():
        with open("%s/%s.dat" % (sys.argv[2], method), "w") as d:
            for p in sorted(pts):
                d.write("%d %.5f %.5f\n" % p)
        f.write(method + "\n")
with open(sys.argv[2] + "/dense", "w") as f:
    f.write("%.5f\n" % dense)
PY
dense=$(cat "$tmp/dense")
plots_a="" plots_n=""
for m in $(cat "$tmp/methods"); do
    title=$(echo "$m" | sed 's/_/ /g')
    plots_a="$plots_a '$tmp/$m.dat' using 1:2 with linespoints title '$title',"
    plots_n="$plots_n '$tmp/$m.dat' using 1:3 with linespoints title '$title',"
done
gnuplot <<GP
set terminal pngcairo size 1200,500 font ",11" noenhanced
set output '$2'
set multiplot layout 1,2 title "$(basename "$1"): decode positions 1024..2046 of the dev text"
set logscale x 2
set xlabel 'tokens selected per query (top-k, or the store budget)'
set key bottom right
set grid
set ylabel 'argmax agreement with dense'
plot $plots_a
set ylabel 'decode NLL per token'
set key top right
plot $plots_n $dense with lines dashtype 2 lc black title 'dense'
unset multiplot
GP
echo "wrote $2"
