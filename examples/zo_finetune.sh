#!/usr/bin/env bash
# Fine-tuning the main job's model on a second corpus with zeroth-order steps (MeZO: two forward
# passes a step, no backward, no gradients, no optimizer state) next to backprop AdamW from the
# same start (docs/optimizers.md, "Fine-tuning demo").
#
#   examples/zo_finetune.sh            (runs scripts/run.sh first if the main job has no checkpoint)
#
# The second corpus is Debian's `fortunes` (installed by scripts/setup.sh): the fortunes of every
# file, shuffled in a fixed order (so the last 5%, the validation part, is not one topic), in
# the main job's BPE vocabulary (data/kjv_vocab.json). Both runs start from the main job's last
# checkpoint, validate before the first step and then regularly, and log the tensor memory they
# hold (peak_mib). Writes runs/fortunes/{zo,adamw}.jsonl and runs/fortunes/zo_vs_backprop.png
# (validation loss against steps and against peak memory) and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
[ -f runs/kjv/checkpoints/latest ] || scripts/run.sh
start="runs/kjv/checkpoints/$(cat runs/kjv/checkpoints/latest)"
mkdir -p data runs/fortunes

if [ ! -f data/fortunes_train.bin ] || [ ! -f data/fortunes_val.bin ]; then
  # One fortune a record ("%" lines separate them), shuffled with a fixed random source.
  for f in /usr/share/games/fortunes/*; do
    case "$f" in *.dat | *.u8) continue ;; esac
    [ -f "$f" ] && [ ! -L "$f" ] && cat "$f" && echo "%"
  done | awk 'BEGIN { RS = "\n%\n"; ORS = "\0" } NF { print }' \
    | shuf -z --random-source=<(yes memtrain) | tr '\0' '\n' > data/fortunes.txt
  build/make_tokens data/fortunes.txt data/fortunes --vocab data/kjv_vocab.json --val_fraction 0.05
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
run() {  # run NAME JOB [--set ...]
  local name=$1 job=$2; shift 2
  build/trainer "$job" --quiet --set model.init_from="$start" \
    --set output.metrics="runs/fortunes/$name.jsonl" "$@"
}
run zo examples/jobs/fortunes_zo.pbtxt
run adamw examples/jobs/fortunes_adamw.pbtxt

last() {  # last FILE KEY: the value in the last line that has KEY
  grep "\"$2\"" "$1" | tail -1 | grep -o "\"$2\": [-0-9.e+]*" | cut -d' ' -f2
}
first_val() { grep '"val_loss"' "$1" | head -1 | grep -o '"val_loss": [-0-9.e+]*' | cut -d' ' -f2; }
summary=runs/fortunes/summary.txt
{
  printf '%-6s %6s %10s %10s %10s %10s\n' run steps val_start val_end peak_mib ms_per_step
  for r in zo adamw; do
    f=runs/fortunes/$r.jsonl
    printf '%-6s %6s %10s %10s %10s %10s\n' "$r" "$(last "$f" step)" "$(first_val "$f")" \
      "$(last "$f" val_loss)" "$(last "$f" peak_mib)" \
      "$(grep '"step_ms"' "$f" | grep -o '"step_ms": [0-9.]*' | cut -d' ' -f2 | sort -n \
         | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
  done
} | tee "$summary"

command -v gnuplot >/dev/null || { echo "gnuplot is missing: no plot"; exit 0; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for r in zo adamw; do
  grep -o '"step": [0-9]*, "val_loss": [-0-9.e+]*' "runs/fortunes/$r.jsonl" \
    | sed -E 's/"step": ([0-9]+), "val_loss": /\1 /' > "$tmp/$r.val"
  peak=$(last "runs/fortunes/$r.jsonl" peak_mib)
  # Validation loss against the run's peak memory: every evaluation at the run's peak.
  awk -v p="$peak" '{ print p, $2 }' "$tmp/$r.val" > "$tmp/$r.mem"
done
gnuplot <<GP
set terminal pngcairo size 1200,480 noenhanced
set output 'runs/fortunes/zo_vs_backprop.png'
set multiplot layout 1,2 title 'Fine-tuning the KJV model on fortunes: validation loss (nats/token)'
set grid
set xlabel 'step'
set ylabel 'validation loss'
plot '$tmp/zo.val' using 1:2 with linespoints title 'ZO-SGD (MeZO)', \
     '$tmp/adamw.val' using 1:2 with linespoints title 'backprop AdamW'
set xlabel 'peak tensor memory (MiB)'
set xrange [0:*]
plot '$tmp/zo.mem' using 1:2 with points pt 7 title 'ZO-SGD (MeZO)', \
     '$tmp/adamw.mem' using 1:2 with points pt 5 title 'backprop AdamW'
unset multiplot
GP
echo "wrote runs/fortunes/zo_vs_backprop.png and $summary"
