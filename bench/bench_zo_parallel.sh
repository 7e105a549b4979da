#!/usr/bin/env bash
# Perturbation parallelism, measured through the trainer: the same zeroth-order job (the GPT-2
# 124M layer shape, byte vocabulary, B=4 T=256, one sample = 2 forward lanes a step) on one rank,
# then with parallel { perturbation: 2 } on two ranks (each runs one lane; they exchange two
# doubles a step), both with the same threads per rank (MEMTRAIN_THREADS, default 1). Prints the
# median step time of each (the first step, which warms up, left out) and the speed-up.
#
#   bench/bench_zo_parallel.sh [steps (default 6)] [threads per rank (default 1)]
# Needs a build in build/ (BUILD=dir to use another) and 2 x threads free cores.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
export MEMTRAIN_THREADS=${2:-1}
BUILD=${BUILD:-build}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$BUILD/make_tokens" tests/data/sample.txt "$W/d" --val_fraction 0.1 >/dev/null
cat > "$W/job.pbtxt" <<EOF
model { gpt { n_layer: 12 n_head: 12 n_embd: 768 vocab_size: 256 max_seq_len: 256 } }
data { train_tokens: "$W/d_train.bin" }
train { steps: $STEPS batch_size: 4 seq_len: 256 log_every: 1 }
optimizer { zo { lr: 1e-6 eps: 1e-3 } }
EOF
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
median_ms() {  # the median step_ms of a metrics file, step 1 left out
  grep '"step_ms"' "$1" | tail -n +2 | grep -o '"step_ms": [0-9.]*' | cut -d' ' -f2 | sort -n \
    | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
mpirun -np 1 --bind-to none "$BUILD/trainer" "$W/job.pbtxt" --quiet \
  --set output.metrics="$W/p1.jsonl"
mpirun -np 2 --oversubscribe --bind-to none "$BUILD/trainer" "$W/job.pbtxt" --quiet \
  --set parallel.perturbation=2 --set output.metrics="$W/p2.jsonl"
one=$(median_ms "$W/p1.jsonl")
two=$(median_ms "$W/p2.jsonl")
# The two runs take the same steps: their losses must agree bit for bit.
loss() { grep -o '"loss": [-0-9.e+]*' "$1" | tr '\n' ' '; }
same=$([ "$(loss "$W/p1.jsonl")" = "$(loss "$W/p2.jsonl")" ] && echo "identical" || echo "DIFFERENT")
awk -v a="$one" -v b="$two" -v t="$MEMTRAIN_THREADS" -v n="$STEPS" -v s="$same" 'BEGIN {
  printf "ZO step, %d thread(s) per rank, median of %d steps: 1 rank %.1f ms, perturbation=2 on 2 ranks %.1f ms: speed-up %.2fx (target >= 1.7); losses %s\n", t, n - 1, a, b, a / b, s }'
