#!/usr/bin/env bash
# FedTiny against dense FedAvg and one-shot magnitude pruning on Fashion-MNIST (docs/federated.md,
# "Experiment"): 100 clients with a Dirichlet(0.5) non-IID split, 10 per round, the job of
# examples/jobs/fashion_fedavg.pbtxt with the learning rate cosine-decayed over ROUNDS rounds
# (default 60) to 5% of its peak and the test accuracy every 2 rounds, on 2 ranks:
#   dense     no pruning
#   oneshot10 / oneshot2   magnitude pruning at the server before round 0 to 10% / 2%
#   fedtiny10 / fedtiny2   FedTiny (adaptive BN selection + progressive pruning) to 10% / 2%,
#                          adjusting masks in the first 2/3 of the rounds from a rate of 0.3
#   fedtiny10_short ...    FedTiny with the job spec's defaults: 10 adjustment rounds from 0.1
#   central   the same CNN trained centrally (one client holding all 60000 images, one rank),
#             ROUNDS/5 epochs: what the non-IID federated setting costs
# Writes runs/fedtiny/<name>.jsonl, runs/fedtiny/accuracy.png (test accuracy against rounds) and
# prints a table: final accuracy, the mean of the last 5 evaluations (single evaluations swing by
# a few points from round to round), density, mean bytes up per round, peak client memory.
#
#   examples/fedtiny_experiment.sh [ROUNDS]       (BUILD=dir: use that build of the trainer;
#                                                  RUNS="dense fedtiny10 ...": only those runs;
#                                                  REPORT_ONLY=1: the table and plot of runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-60}
if [ -z "${BUILD:-}" ]; then
  BUILD=build
  scripts/setup.sh build >/dev/null
fi
mkdir -p runs/fedtiny
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 MEMTRAIN_THREADS=1
COMMON=(--quiet --set schedule.decay=COSINE --set schedule.min_lr_ratio=0.05
        --set federated.eval_every=2)
run() {  # run NAME [--set ...]
  local name=$1; shift
  rm -rf "runs/fedtiny/$name" "runs/fedtiny/$name.jsonl"
  echo "== $name"
  mpirun --oversubscribe --bind-to none -np 2 "$BUILD/trainer" examples/jobs/fashion_fedavg.pbtxt \
    "${COMMON[@]}" --set train.steps="$ROUNDS" --set checkpoint.dir="runs/fedtiny/$name" \
    --set output.metrics="runs/fedtiny/$name.jsonl" "$@"
}
RUNS=${RUNS:-central dense oneshot10 fedtiny10 oneshot2 fedtiny2}
for name in $RUNS; do
  [ -n "${REPORT_ONLY:-}" ] && break
  case $name in
    central)
      echo "== central"
      rm -rf runs/fedtiny/central runs/fedtiny/central.jsonl
      MEMTRAIN_THREADS=2 "$BUILD/trainer" examples/jobs/fashion_fedavg.pbtxt "${COMMON[@]}" \
        --set parallel.data=1 --set federated.num_clients=1 --set federated.clients_per_round=1 \
        --set train.steps=$((ROUNDS / 5)) --set federated.eval_every=1 \
        --set checkpoint.dir=runs/fedtiny/central --set output.metrics=runs/fedtiny/central.jsonl ;;
    dense) run dense ;;
    oneshot*) run "$name" --set federated.pruning.method=ONE_SHOT \
                --set federated.pruning.density="$(awk -v d="${name#oneshot}" 'BEGIN { print d / 100 }')" ;;
    fedtiny*_short) d=${name#fedtiny}; d=${d%_short}
                run "$name" --set federated.pruning.method=FEDTINY \
                  --set federated.pruning.density="$(awk -v d="$d" 'BEGIN { print d / 100 }')" ;;
    fedtiny*) run "$name" --set federated.pruning.method=FEDTINY \
                --set federated.pruning.density="$(awk -v d="${name#fedtiny}" 'BEGIN { print d / 100 }')" \
                --set federated.pruning.adjust_rounds=$((ROUNDS * 2 / 3)) \
                --set federated.pruning.initial_rate=0.3 ;;
    *) echo "unknown run $name (central, dense, oneshotD, fedtinyD, fedtinyD_short; D: density in %)" >&2
       exit 2 ;;
  esac
done

# name: final accuracy, mean of the last 5 evaluations, density, bytes up per round (MB), peak
# client memory (MiB).
printf '%-15s %9s %11s %8s %12s %11s\n' run accuracy "last-5 mean" density "MB up/round" "client MiB"
for f in $RUNS; do
  python3 - "runs/fedtiny/$f.jsonl" "$f" <<'EOF'
import json, sys
accs, dens, up, mem, n = [], None, 0, 0, 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "test_accuracy" in r: accs.append(r["test_accuracy"])
    if "density" in r: dens = r["density"]
    if "bytes_up" in r:
        up += r["bytes_up"]; n += 1; mem = max(mem, r.get("peak_client_mib", 0))
last = accs[-5:]
print("%-15s %9.4f %11.4f %8.4f %12.2f %11.1f" % (sys.argv[2], accs[-1], sum(last) / len(last), dens,
                                                 up / max(n, 1) / 1e6, mem))
EOF
done
if command -v gnuplot >/dev/null; then
  plot=""
  for f in $RUNS; do
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "test_accuracy" in r: print(r["step"] * int(sys.argv[2]), r["test_accuracy"])
' "runs/fedtiny/$f.jsonl" "$([ "$f" = central ] && echo 5 || echo 1)" > "runs/fedtiny/$f.dat"
    title=$f
    [ "$f" = central ] && title="central (x = 5 x epochs)"
    plot="$plot${plot:+, }\"runs/fedtiny/$f.dat\" w lp t \"$title\""
  done
  gnuplot <<EOF
set terminal pngcairo size 900,560 noenhanced
set output "runs/fedtiny/accuracy.png"
set xlabel "round"; set ylabel "test accuracy"; set key bottom right; set grid
set yrange [0.6:0.95]
set title "Fashion-MNIST, 100 clients (Dirichlet 0.5), 10 per round, $ROUNDS rounds"
plot $plot
EOF
  echo "wrote runs/fedtiny/accuracy.png"
fi
