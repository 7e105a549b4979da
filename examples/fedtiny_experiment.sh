#!/usr/bin/env bash
# FedTiny against dense FedAvg and one-shot magnitude pruning on Fashion-MNIST (docs/federated.md,
# "Experiment"): 100 clients with a Dirichlet(0.5) non-IID split, 10 per round, the job of
# examples/jobs/fashion_fedavg.pbtxt, for ROUNDS rounds (default 40), on 2 ranks:
#   dense     no pruning
#   oneshot10 / oneshot2   magnitude pruning at the server before round 0 to 10% / 2%
#   fedtiny10 / fedtiny2   FedTiny (adaptive BN selection + progressive pruning) to 10% / 2%
# Writes runs/fedtiny/<name>.jsonl, runs/fedtiny/accuracy.png (test accuracy against rounds) and
# prints a table: final accuracy, density, mean bytes up per round, peak client memory.
#
#   examples/fedtiny_experiment.sh [ROUNDS]       (BUILD=dir: use that build of the trainer)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-40}
if [ -z "${BUILD:-}" ]; then
  BUILD=build
  scripts/setup.sh build >/dev/null
fi
mkdir -p runs/fedtiny
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 MEMTRAIN_THREADS=1
run() {  # run NAME [--set ...]
  local name=$1; shift
  rm -rf "runs/fedtiny/$name" "runs/fedtiny/$name.jsonl"
  echo "== $name"
  mpirun --oversubscribe --bind-to none -np 2 "$BUILD/trainer" examples/jobs/fashion_fedavg.pbtxt \
    --quiet --set train.steps="$ROUNDS" --set checkpoint.dir="runs/fedtiny/$name" \
    --set output.metrics="runs/fedtiny/$name.jsonl" "$@"
}
run dense
for d in 10 2; do
  density=$(awk -v d=$d 'BEGIN { print d / 100 }')
  run oneshot$d --set federated.pruning.method=ONE_SHOT --set federated.pruning.density="$density"
  run fedtiny$d --set federated.pruning.method=FEDTINY --set federated.pruning.density="$density"
done

# name: final accuracy, density, bytes up per round (MB), peak client memory (MiB).
printf '%-10s %10s %9s %14s %16s\n' run accuracy density "MB up/round" "client MiB"
for f in dense oneshot10 fedtiny10 oneshot2 fedtiny2; do
  python3 - "runs/fedtiny/$f.jsonl" "$f" <<'EOF'
import json, sys
acc, dens, up, mem, n = None, None, 0, 0, 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "test_accuracy" in r: acc = r["test_accuracy"]
    if "density" in r: dens = r["density"]
    if "bytes_up" in r:
        up += r["bytes_up"]; n += 1; mem = max(mem, r.get("peak_client_mib", 0))
print("%-10s %10.4f %9.4f %14.2f %16.1f" % (sys.argv[2], acc, dens, up / max(n, 1) / 1e6, mem))
EOF
done
if command -v gnuplot >/dev/null; then
  for f in dense oneshot10 fedtiny10 oneshot2 fedtiny2; do
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "test_accuracy" in r: print(r["step"], r["test_accuracy"])
' "runs/fedtiny/$f.jsonl" > "runs/fedtiny/$f.dat"
  done
  gnuplot <<'EOF'
set terminal pngcairo size 900,560
set output "runs/fedtiny/accuracy.png"
set xlabel "round"; set ylabel "test accuracy"; set key bottom right; set grid
set title "Fashion-MNIST, 100 clients (Dirichlet 0.5), 10 per round"
plot "runs/fedtiny/dense.dat" w lp t "dense FedAvg", \
     "runs/fedtiny/fedtiny10.dat" w lp t "FedTiny 10%", "runs/fedtiny/oneshot10.dat" w lp t "one-shot 10%", \
     "runs/fedtiny/fedtiny2.dat" w lp t "FedTiny 2%", "runs/fedtiny/oneshot2.dat" w lp t "one-shot 2%"
EOF
  echo "wrote runs/fedtiny/accuracy.png"
fi
