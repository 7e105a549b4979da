#!/usr/bin/env bash
# The main job: installs what is missing, builds, tokenises the King James Bible (Debian's
# bible-kjv, one verse a line without its reference) with a 4096-token byte-level BPE learned on
# the training part (data/kjv_vocab.json; the token files and vocabulary are made once and kept
# under data/), and trains a small GPT-2 on it with 2 data-parallel ranks
# (examples/jobs/kjv.pbtxt): progress on the terminal, metrics in runs/kjv/metrics.jsonl, a loss
# plot in runs/kjv/loss.png, checkpoints in runs/kjv/checkpoints, and a text sample at the end.
# Usage: scripts/run.sh [--set field.path=value ...]     (extra arguments go to the trainer)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
mkdir -p data runs/kjv
if [ ! -f data/kjv_train.bin ] || [ ! -f data/kjv_val.bin ] || [ ! -f data/kjv_vocab.json ]; then
  bible -f "Gen1:1-Rev22:21" | sed -E 's/^[^ ]+ //' > data/kjv.txt   # "Ge1:1 In the ..." -> "In the ..."
  build/make_tokens data/kjv.txt data/kjv --val_fraction 0.05 --bpe 4096
fi
# Open MPI refuses root unless told, and 2 ranks may exceed the cores it counts.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 2 --oversubscribe --bind-to none build/trainer examples/jobs/kjv.pbtxt "$@"
scripts/plot_metrics.sh runs/kjv/metrics.jsonl runs/kjv/loss.png
echo "--- sample:"
build/trainer sample runs/kjv/checkpoints --vocab data/kjv_vocab.json --prompt "And God said" \
  --tokens 120 --top_k 40 --seed 7
