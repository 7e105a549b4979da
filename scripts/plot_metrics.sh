#!/usr/bin/env bash
# Plots a trainer metrics file (JSON Lines) as a PNG of training and validation loss per step.
# Usage: scripts/plot_metrics.sh METRICS.jsonl OUT.png [METRICS2.jsonl LABEL1 LABEL2]
#   With a second metrics file, both runs go on one plot (e.g. two optimizers).
set -euo pipefail
[ $# -eq 2 ] || [ $# -eq 5 ] || { echo "usage: $0 METRICS.jsonl OUT.png [M2.jsonl L1 L2]" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "gnuplot is missing: apt-get install gnuplot-nox" >&2; exit 2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
extract() {  # extract FILE KEY -> "step value" lines
  grep -o "\"step\": [0-9]*, \"$2\": [-0-9.e+]*" "$1" | sed -E 's/"step": ([0-9]+), "[a-z_]+": /\1 /'
}
plots=()
add() {  # add FILE LABEL
  local n=${#plots[@]}
  extract "$1" loss > "$tmp/t$n"; extract "$1" val_loss > "$tmp/v$n"
  [ -s "$tmp/t$n" ] && plots+=("'$tmp/t$n' using 1:2 with lines title '$2 train'")
  [ -s "$tmp/v$n" ] && plots+=("'$tmp/v$n' using 1:2 with linespoints title '$2 val'")
  return 0
}
if [ $# -eq 5 ]; then add "$1" "$4"; add "$3" "$5"; else add "$1" ""; fi
[ ${#plots[@]} -gt 0 ] || { echo "$1 has no loss entries" >&2; exit 2; }
spec=$(IFS=,; echo "${plots[*]}")
gnuplot <<GP
set terminal pngcairo size 900,540 noenhanced
set output '$2'
set xlabel 'step'
set ylabel 'loss'
set grid
plot $spec
GP
echo "wrote $2"
