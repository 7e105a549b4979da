#!/usr/bin/env bash
# The optimizer experiment of docs/optimizers.md: the main job (examples/jobs/kjv.pbtxt, 2 ranks)
# with AdamW (lr 1e-3, wd 0.1) and with Lion (lr 3e-4, wd 0.3: 3.3x smaller lr, 3x larger decay,
# per the Lion paper's advice), fp32 and bf16 momentum. Writes runs/exp/*.jsonl and
# runs/exp/lion_vs_adamw.png. Run scripts/run.sh once first (it makes the data and the build).
# The figures in docs/optimizers.md were measured when the main job was byte-level; it is now a
# 4096-token BPE job (whose own AdamW lr is 2e-3), so today's figures differ from them.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p runs/exp
run() {  # run NAME --set ...
  local name=$1; shift
  mpirun -np 2 --oversubscribe --bind-to none build/trainer examples/jobs/kjv.pbtxt --quiet \
    --set checkpoint.dir= --set output.metrics="runs/exp/$name.jsonl" "$@"
}
run adamw --set optimizer.adamw.lr=1e-3
run lion --set optimizer.lion.lr=3e-4 --set optimizer.lion.weight_decay=0.3
run lion_bf16 --set optimizer.lion.lr=3e-4 --set optimizer.lion.weight_decay=0.3 \
  --set optimizer.lion.momentum_dtype=BF16
scripts/plot_metrics.sh runs/exp/adamw.jsonl runs/exp/lion_vs_adamw.png runs/exp/lion.jsonl \
  AdamW Lion
for f in adamw lion lion_bf16; do
  printf '%-10s final train loss %s, val loss %s, optimizer state %s bytes\n' "$f" \
    "$(grep '"loss"' runs/exp/$f.jsonl | tail -1 | grep -o '"loss": [0-9.]*' | cut -d' ' -f2)" \
    "$(grep val_loss runs/exp/$f.jsonl | tail -1 | grep -o '"val_loss": [0-9.]*' | cut -d' ' -f2)" \
    "$(grep -o '"opt_state_bytes": [0-9]*' runs/exp/$f.jsonl | head -1 | cut -d' ' -f2)"
done
