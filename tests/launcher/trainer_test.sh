#!/usr/bin/env bash
# End-to-end tests of the trainer binary:
#   resume    10 + 10 steps (--stop_after, --resume) give bit-identical losses, weights and
#             optimizer state to 20 uninterrupted steps (shuffled data, accumulation, cosine lr)
#   dp        mpirun -np 2 with batch B matches one process with batch 2B (losses, 1e-5 relative)
#   sequence  parallel.sequence 2, 3, 4 (Ulysses) match one rank, also with data=2; resume
#   bad       bad input: exit code 2, a message naming the field or file, nothing written; --check
#             refuses the same data; a model larger than the memory is refused at once
#   tools     --check (with the memory estimate), sample (streamed), export (--force to overwrite),
#             a run initialised from the exported llm.c file, plot
#   retention checkpoint.keep keeps the checkpoints written last, never what the run just wrote
#   nonfinite a diverging run (huge lr, a checkpoint every step) never saves NaN; SKIP goes on;
#             every metrics line is JSON
#   outputs   a folder as the job, unwritable outputs refused at start (exit 2, nothing written),
#             write errors on metrics and checkpoints stop the run naming the file, no temporary
#             checkpoint folder is left, --set with a bad value prints one clean message
#   ranks     ranks started with another job, options or build stop at once with exit 2
#   damaged   `latest` with a newline; a damaged newest checkpoint names --resume_from, which works
#   gpu       train.device "cuda": 20 steps match the CPU run (1e-5 relative), 10 + 10 steps with
#             --resume are bit-identical to 20 on the GPU, a GPU checkpoint resumes on the CPU,
#             BF16 trains; exit 77 (skipped) without a GPU
#   zo        optimizer.zo (MeZO): lr 0 leaves the weights bit-identical however many steps run,
#             10 + 10 steps with --resume are bit-identical to 20, bad zo fields are refused
#   watchdog  mpirun -np 2 with one rank SIGSTOPped mid-run: the other reports the collective it
#             waits for and the job ends with a non-zero exit within seconds, instead of hanging
#   offload   offload { tier: HOST | SSD }: losses, weights and optimizer state bit-identical to
#             the run without offload (several k, k', depths; Lion with the state on the device;
#             data=2; zeroth-order), --resume of an SSD run bit-identical, no file left in
#             ssd_path, a device budget too small refused naming the smallest that works
#   signals   SIGTERM mid-run (one process, and both ranks of mpirun -np 2): a checkpoint after the
#             step, exit 143, and --resume ends bit-identical to an uninterrupted run
#   federated a federated job (FedAvg of a small CNN on Fashion-MNIST, 20 clients, 4 a round, 3
#             rounds): test accuracy rises above 0.5; mpirun -np 2 gives byte-identical checkpoint
#             files, partition and metrics values; FedTiny pruning stopped after round 2 and
#             resumed ends bit-identical (weights and masks) to an uninterrupted run; bad input
#             (clients_per_round > num_clients, density 0, a missing fashion_mnist_dir or IDX
#             file, more clients than images, a job larger than the memory) exits 2 naming the
#             field or file, nothing written; --check prints the memory estimate and the run's
#             peak RSS is within [-64, +32] MiB of it;
#             exit 77 (skipped) without Debian's dataset-fashion-mnist
# Usage: trainer_test.sh BUILD_DIR SOURCE_DIR CASE
set -u
BUILD=$1 SRC=$2 CASE=$3
TRAINER=$BUILD/trainer
JOB=$SRC/tests/launcher/tiny.pbtxt
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 MEMTRAIN_THREADS=1 W_DIR=$W
MPIRUN="mpirun --oversubscribe --bind-to none"
fail() { echo "FAIL: $*"; exit 1; }
# Every line of a metrics file is JSON (no NaN or Infinity, which JSON does not have).
check_json() {
  if command -v python3 >/dev/null; then
    python3 -c '
import json, sys
def bad(c): raise ValueError("not JSON: " + c)
for n, line in enumerate(open(sys.argv[1]), 1):
    try: json.loads(line, parse_constant=bad)
    except ValueError as e: sys.exit("%s:%d: %s: %s" % (sys.argv[1], n, e, line.strip()))
' "$1" || fail "metrics line is not JSON"
  elif grep -Eiq '(: |\[)-?(nan|inf)' "$1"; then
    fail "metrics hold nan/inf: $(grep -Ei 'nan|inf' "$1" | head -3)"
  fi
}
# Every F32 tensor of every checkpoint folder under $1 is finite.
check_finite() {
  command -v python3 >/dev/null || return 0
  python3 -c '
import json, math, struct, sys, glob, array
for f in sorted(glob.glob(sys.argv[1] + "/step_*/*.safetensors")):
    b = open(f, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    for name, e in h.items():
        if name == "__metadata__" or e["dtype"] != "F32": continue
        a = array.array("f"); s, t = e["data_offsets"]; a.frombytes(b[8 + n + s:8 + n + t])
        if not all(math.isfinite(x) for x in a): sys.exit("%s: %s is not finite" % (f, name))
' "$1" || fail "a checkpoint holds NaN or infinity"
}
# Names of the checkpoint folders in $1, sorted, on one line.
ckpts() { (cd "$1" && ls -d step_* 2>/dev/null | tr '\n' ' '); }
# No temporary of a checkpoint save is left under $1.
no_tmp() {
  left=$(find "$1" -name '*.tmp.*' -o -name '*.old' 2>/dev/null)
  [ -z "$left" ] || fail "temporaries left: $left"
}

"$BUILD/make_tokens" "$SRC/tests/data/sample.txt" "$W/doc" --val_fraction 0.1 >/dev/null \
  || fail "make_tokens"
DATA=(--set data.train_tokens="$W/doc_train.bin" --set data.val_tokens="$W/doc_val.bin")
# Metrics lines without the timing fields, which differ between runs.
losses() {
  grep -v '"event"' "$1" |
    sed -E 's/, "tokens_per_sec": [0-9.]+, "step_ms": [0-9.]+, "peak_mib": [0-9.]+(, "comm_wait_ms": [0-9.]+)?//'
}

# Runs a command that must fail with exit 2, print `message` and write nothing under $W/out.
expect_bad() {  # expect_bad "message" command...
  local want=$1; shift
  rm -rf "$W/out"
  out=$("$@" 2>&1); rc=$?
  [ $rc = 2 ] || fail "exit code $rc (want 2) for: $* -> $out"
  echo "$out" | grep -qF -- "$want" || fail "message lacks '$want': $out"
  [ ! -e "$W/out" ] || fail "something was written for: $*"
}

case $CASE in
offload)
  # 4 layers (2 stay resident: embedding and head), accumulation 2, eval every 5, checkpoints.
  O=(--set model.gpt.n_layer=4 --quiet)
  vals() { grep -o '"\(loss\|grad_norm\|val_loss\|loss_plus\|loss_minus\)": [^,}]*' "$1"; }
  same_run() {  # same_run A B: metrics values and the last checkpoint identical
    diff <(vals "$W/$1.jsonl") <(vals "$W/$2.jsonl") >/dev/null || fail "offload: $2 metrics differ from $1"
    [ "$(vals "$W/$1.jsonl" | wc -l)" -gt 20 ] || fail "offload: $1 has too few metrics"
    for f in model optimizer; do
      cmp -s "$W/$1/step_00000020/$f.safetensors" "$W/$2/step_00000020/$f.safetensors" \
        || fail "offload: $2 $f.safetensors differs from $1"
    done
  }
  run() {  # run NAME [mpirun -np N] -- sets...
    local name=$1; shift
    "$@" --set checkpoint.dir="$W/$name" --set output.metrics="$W/$name.jsonl" \
      || fail "offload run $name"
  }
  mkdir -p "$W/tier"
  run base $TRAINER "$JOB" "${DATA[@]}" "${O[@]}"
  run host $TRAINER "$JOB" "${DATA[@]}" "${O[@]}" --set offload.tier=HOST
  same_run base host
  grep -q '"offload_read_mib"' "$W/host.jsonl" || fail "offload: no offload fields in the metrics"
  run ssd $TRAINER "$JOB" "${DATA[@]}" "${O[@]}" --set offload.tier=SSD \
    --set offload.ssd_path="$W/tier" --set offload.resident_blocks=3 --set offload.swap_batch=2 \
    --set offload.prefetch_depth=2 --set offload.piece_mib=1
  same_run base ssd
  [ -z "$(ls -A "$W/tier")" ] || fail "offload: files left in ssd_path: $(ls "$W/tier")"
  # Resume an SSD run from step 10.
  SSD=(--set offload.tier=SSD --set offload.ssd_path="$W/tier" --set offload.io_engine=THREADS)
  run ssdr $TRAINER "$JOB" "${DATA[@]}" "${O[@]}" "${SSD[@]}" --stop_after 10
  run ssdr $TRAINER "$JOB" "${DATA[@]}" "${O[@]}" "${SSD[@]}" --resume
  diff <(vals "$W/base.jsonl") <(vals "$W/ssdr.jsonl" | grep -v xx) >/dev/null \
    || fail "offload: resumed SSD run metrics differ"
  for f in model optimizer; do
    cmp -s "$W/base/step_00000020/$f.safetensors" "$W/ssdr/step_00000020/$f.safetensors" \
      || fail "offload: resumed SSD run $f.safetensors differs"
  done
  # Lion with its state on the device.
  LION=(--set optimizer.lion.lr=1e-3 --set optimizer.lion.weight_decay=0.5)
  run lion $TRAINER "$JOB" "${DATA[@]}" "${O[@]}" "${LION[@]}"
  run lionh $TRAINER "$JOB" "${DATA[@]}" "${O[@]}" "${LION[@]}" --set offload.tier=HOST \
    --set offload.optimizer_on_host=false --set offload.swap_batch=2
  same_run lion lionh
  # Data parallelism.
  run dp $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${O[@]}" --set parallel.data=2
  run dpo $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${O[@]}" --set parallel.data=2 \
    --set offload.tier=SSD --set offload.ssd_path="$W/tier"
  same_run dp dpo
  # Zeroth-order (ZO2: each block read once per step, its update applied when it arrives).
  ZO=(--set train.grad_accum=1 --set optimizer.zo.samples=2 --set optimizer.zo.lr=1e-3)
  run zo $TRAINER "$JOB" "${DATA[@]}" "${O[@]}" "${ZO[@]}"
  run zoo $TRAINER "$JOB" "${DATA[@]}" "${O[@]}" "${ZO[@]}" --set offload.tier=HOST \
    --set offload.resident_blocks=1 --set offload.prefetch_depth=0
  same_run zo zoo
  # A device budget too small: refused at start with the smallest that works, which works.
  out=$($TRAINER "$JOB" "${DATA[@]}" "${O[@]}" --set offload.tier=HOST --set train.steps=2 \
          --set model.gpt.n_embd=128 --set offload.device_budget_mib=2 2>&1)
  [ $? = 2 ] || fail "offload: a budget too small was not refused: $out"
  mib=$(echo "$out" | grep -o 'smallest budget that works is offload.device_budget_mib: [0-9]*' |
        grep -o '[0-9]*$')
  [ -n "$mib" ] || fail "offload: no smallest budget in: $out"
  $TRAINER "$JOB" "${DATA[@]}" "${O[@]}" --set offload.tier=HOST --set train.steps=2 \
    --set model.gpt.n_embd=128 --set offload.device_budget_mib="$mib" \
    || fail "offload: the smallest budget ($mib MiB) it named does not work"
  ;;
zo)
  ZO=(--set train.grad_accum=1 --set optimizer.zo.samples=2 --set optimizer.zo.eps=1e-2)
  for n in 5 10; do
    $TRAINER "$JOB" "${DATA[@]}" "${ZO[@]}" --quiet --set optimizer.zo.lr=0 --set train.steps=$n \
      --set checkpoint.dir="$W/z$n" --set output.metrics="$W/z$n.jsonl" || fail "zo lr=0 run"
  done
  cmp "$W/z5/step_00000005/model.safetensors" "$W/z10/step_00000010/model.safetensors" \
    || fail "zo with lr 0 moved the weights"
  grep '"step": 3,' "$W/z10.jsonl" | grep -q '"loss_plus"' || fail "no loss_plus in the metrics"
  [ "$(grep -o '"loss_plus": [0-9.]*' "$W/z10.jsonl" | sort -u | wc -l)" -gt 1 ] || fail "zo lanes not run"
  $TRAINER "$JOB" "${DATA[@]}" "${ZO[@]}" --quiet --set optimizer.zo.lr=1e-3 \
    --set checkpoint.dir="$W/za" --set output.metrics="$W/za.jsonl" || fail "zo run"
  $TRAINER "$JOB" "${DATA[@]}" "${ZO[@]}" --quiet --set optimizer.zo.lr=1e-3 \
    --set checkpoint.dir="$W/zb" --set output.metrics="$W/zb.jsonl" --stop_after 10 || fail "zo half"
  $TRAINER "$JOB" "${DATA[@]}" "${ZO[@]}" --quiet --set optimizer.zo.lr=1e-3 \
    --set checkpoint.dir="$W/zb" --set output.metrics="$W/zb.jsonl" --resume || fail "zo resumed"
  diff <(losses "$W/za.jsonl") <(losses "$W/zb.jsonl") || fail "zo: resumed metrics differ"
  cmp "$W/za/step_00000020/model.safetensors" "$W/zb/step_00000020/model.safetensors" \
    || fail "zo: resumed weights differ"
  cmp -s "$W/za/step_00000020/model.safetensors" "$W/z10/step_00000010/model.safetensors" \
    && fail "zo with lr 1e-3 did not move the weights"
  expect_bad "optimizer.zo.eps" $TRAINER "$JOB" "${DATA[@]}" "${ZO[@]}" --set optimizer.zo.eps=0 \
    --set checkpoint.dir="$W/out/c"
  expect_bad "train.grad_accum" $TRAINER "$JOB" "${DATA[@]}" --set optimizer.zo.lr=1e-3 \
    --set checkpoint.dir="$W/out/c"
  # Perturbation parallelism: the 4 forward passes of a step (2 samples) on 2 ranks give the
  # one-rank run bit for bit; data parallelism (2 ranks of batch B) matches one rank of batch 2B
  # within 1e-6; 2 x 2 on 4 ranks likewise.
  $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${ZO[@]}" --quiet --set optimizer.zo.lr=1e-3 \
    --set parallel.perturbation=2 --set checkpoint.dir="$W/zp" --set output.metrics="$W/zp.jsonl" \
    || fail "zo perturbation=2"
  diff <(losses "$W/za.jsonl") <(losses "$W/zp.jsonl") || fail "zo: perturbation=2 metrics differ"
  cmp "$W/za/step_00000020/model.safetensors" "$W/zp/step_00000020/model.safetensors" \
    || fail "zo: perturbation=2 weights differ from one rank"
  $TRAINER "$JOB" "${DATA[@]}" "${ZO[@]}" --quiet --set optimizer.zo.lr=1e-3 \
    --set train.batch_size=4 --set output.metrics="$W/z1.jsonl" || fail "zo batch 4"
  for grid in "data=2" "data=2 perturbation=2"; do
    n=2; SETS=(--set parallel.data=2)
    [ "$grid" = "data=2 perturbation=2" ] && { n=4; SETS+=(--set parallel.perturbation=2); }
    $MPIRUN -np $n "$TRAINER" "$JOB" "${DATA[@]}" "${ZO[@]}" --quiet --set optimizer.zo.lr=1e-3 \
      "${SETS[@]}" --set output.metrics="$W/zd.jsonl" || fail "zo $grid"
    paste <(losses "$W/zd.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) \
          <(losses "$W/z1.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) |
      awk -v g="$grid" '{ n++; d = $1 - $2; if (d < 0) d = -d; if (d > 1e-6 * $2) { print g " step " n ": " $1 " vs " $2; bad = 1 } }
           END { if (n != 20 || bad) exit 1 }' || fail "zo $grid strays from one rank with batch 4"
  done
  expect_bad "needs optimizer.zo" $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" \
    --set parallel.perturbation=2 --set checkpoint.dir="$W/out/c"
  echo "zo: lr 0 leaves the weights bit-identical; 10 + 10 steps == 20, bit for bit; perturbation=2 == 1 rank bit for bit; data=2 and 2x2 within 1e-6 of one rank with the doubled batch"
  ;;
watchdog)
  $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" --quiet --set parallel.data=2 --set train.steps=100000 \
    --set train.eval_every=0 --set parallel.collective_timeout_s=3 \
    --set output.metrics="$W/wd.jsonl" > "$W/wd.out" 2>&1 &
  job=$!
  for _ in $(seq 100); do grep -q '"step": 3,' "$W/wd.jsonl" 2>/dev/null && break; sleep 0.2; done
  grep -q '"step": 3,' "$W/wd.jsonl" || { kill -9 $job; fail "the 2-rank run did not start: $(cat "$W/wd.out")"; }
  victim=""
  # Only this job's ranks (children of its mpirun): other tests may run trainers of the same job.
  for p in $(pgrep -P "$job"); do
    grep -qz '^OMPI_COMM_WORLD_RANK=1$' /proc/$p/environ 2>/dev/null && victim=$p
  done
  [ -n "$victim" ] || { kill -9 $job; fail "rank 1's process not found"; }
  kill -STOP "$victim"
  start=$SECONDS
  for _ in $(seq 300); do kill -0 $job 2>/dev/null || break; sleep 0.2; done
  if kill -0 $job 2>/dev/null; then
    kill -9 "$victim" $(pgrep -P "$job") $job
    fail "the job still hangs $((SECONDS - start)) s after rank 1 stopped"
  fi
  wait $job; rc=$?
  kill -9 "$victim" 2>/dev/null
  [ $rc != 0 ] || fail "the job exited 0 after a rank stopped"
  grep -q "rank 0: collective timeout: " "$W/wd.out" || fail "no watchdog report: $(cat "$W/wd.out")"
  echo "watchdog: job ended (exit $rc) $((SECONDS - start)) s after rank 1 was stopped: $(grep -o 'rank 0: collective timeout: [^(]*' "$W/wd.out")"
  ;;
gpu)
  out=$($TRAINER "$JOB" "${DATA[@]}" --quiet --set train.device=cuda --set train.steps=1 2>&1)
  if echo "$out" | grep -q 'train.device = "cuda" but'; then
    echo "gpu: skipped: $out"
    exit 77
  fi
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set output.metrics="$W/cpu.jsonl" || fail "cpu run"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set train.device=cuda --set checkpoint.dir="$W/g" \
    --set output.metrics="$W/gpu.jsonl" || fail "gpu run"
  paste <(losses "$W/gpu.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) \
        <(losses "$W/cpu.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) |
    awk '{ n++; d = $1 - $2; if (d < 0) d = -d; r = d / $2; if (r > worst) worst = r
           if (r > 1e-5) { print "step " n ": gpu " $1 " cpu " $2; bad = 1 } }
         END { printf "gpu: largest relative loss difference to the CPU over %d steps: %.3g\n", n, worst
               if (n != 20 || bad) exit 1 }' || fail "GPU losses differ from the CPU run"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set train.device=cuda --set checkpoint.dir="$W/h" \
    --set output.metrics="$W/h.jsonl" --stop_after 10 || fail "gpu first half"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set train.device=cuda --set checkpoint.dir="$W/h" \
    --set output.metrics="$W/h.jsonl" --resume || fail "gpu resumed half"
  diff <(losses "$W/gpu.jsonl") <(losses "$W/h.jsonl") || fail "gpu: resumed metrics differ"
  for f in model.safetensors optimizer.safetensors; do
    cmp "$W/g/step_00000020/$f" "$W/h/step_00000020/$f" || fail "gpu: resumed $f differs"
  done
  # Checkpoints are the same files on either device: the GPU's step-10 checkpoint resumes on the
  # CPU, and steps 11-20 follow the GPU run's losses.
  mkdir -p "$W/x" && cp -r "$W/h/step_00000010" "$W/x/" && echo step_00000010 > "$W/x/latest"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/x" \
    --set output.metrics="$W/x.jsonl" --resume || fail "resume a GPU checkpoint on the CPU"
  paste <(losses "$W/x.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) \
        <(losses "$W/gpu.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2 | tail -10) |
    awk '{ n++; d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $2) { print "step " n + 10 ": cpu " $1 " gpu " $2; bad = 1 } }
         END { if (n != 10 || bad) exit 1 }' || fail "CPU resume of a GPU checkpoint strays"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set train.device=cuda --set train.precision=BF16 \
    --set output.metrics="$W/bf16.jsonl" || fail "bf16 run"
  paste <(losses "$W/bf16.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) \
        <(losses "$W/cpu.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) |
    awk '{ n++; d = $1 - $2; if (d < 0) d = -d; r = d / $2; if (r > worst) worst = r; last = $1; first = first ? first : $1 }
         END { printf "gpu: bf16 loss %.4f -> %.4f, largest relative difference to fp32 CPU %.3g\n", first, last, worst
               if (n != 20 || worst > 0.02) exit 1 }' || fail "BF16 run strays from fp32"
  # Zeroth-order on the GPU: the same noise (Philox is bit-identical), so the same trajectory as
  # the CPU's up to the forward passes' rounding.
  ZO=(--set train.grad_accum=1 --set optimizer.zo.samples=2 --set optimizer.zo.eps=1e-2
      --set optimizer.zo.lr=1e-3 --set train.steps=10)
  $TRAINER "$JOB" "${DATA[@]}" "${ZO[@]}" --quiet --set output.metrics="$W/zc.jsonl" || fail "zo cpu"
  $TRAINER "$JOB" "${DATA[@]}" "${ZO[@]}" --quiet --set train.device=cuda \
    --set output.metrics="$W/zg.jsonl" || fail "zo gpu"
  paste <(losses "$W/zg.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) \
        <(losses "$W/zc.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) |
    awk '{ n++; d = $1 - $2; if (d < 0) d = -d; r = d / $2; if (r > worst) worst = r }
         END { printf "gpu: zo largest relative loss difference to the CPU over %d steps: %.3g\n", n, worst
               if (n != 10 || worst > 1e-4) exit 1 }' || fail "ZO on the GPU strays from the CPU"
  echo "gpu: CPU == GPU within 1e-5, GPU resume bit-identical, GPU checkpoint resumes on the CPU, bf16 within 2e-2, zo within 1e-4"
  ;;
resume)
  # AdamW (the job's), and Lion with bf16 momentum and clipping.
  for opt in adamw lion; do
    EXTRA=()
    [ $opt = lion ] && EXTRA=(--set optimizer.lion.lr=1e-3 --set optimizer.lion.momentum_dtype=BF16
                              --set optimizer.clip_grad_norm=0.5)
    $TRAINER "$JOB" "${DATA[@]}" "${EXTRA[@]}" --quiet --set checkpoint.dir="$W/a$opt" \
      --set output.metrics="$W/a$opt.jsonl" || fail "$opt: uninterrupted run"
    $TRAINER "$JOB" "${DATA[@]}" "${EXTRA[@]}" --quiet --set checkpoint.dir="$W/b$opt" \
      --set output.metrics="$W/b$opt.jsonl" --stop_after 10 || fail "$opt: first half"
    [ "$(cat "$W/b$opt/latest")" = step_00000010 ] || fail "$opt: no checkpoint at step 10"
    # As if the run had gone on past its checkpoint before dying: those lines must go.
    echo '{"step": 11, "loss": 99}' >> "$W/b$opt.jsonl"
    $TRAINER "$JOB" "${DATA[@]}" "${EXTRA[@]}" --quiet --set checkpoint.dir="$W/b$opt" \
      --set output.metrics="$W/b$opt.jsonl" --resume || fail "$opt: resumed half"
    diff <(losses "$W/a$opt.jsonl") <(losses "$W/b$opt.jsonl") || fail "$opt: metrics differ"
    [ "$(losses "$W/a$opt.jsonl" | grep -c '"loss"')" = 20 ] || fail "expected 20 loss lines"
    for f in model.safetensors optimizer.safetensors; do
      cmp "$W/a$opt/step_00000020/$f" "$W/b$opt/step_00000020/$f" || fail "$opt: $f differs"
    done
  done
  # Resuming with another optimizer is refused.
  out=$($TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/badamw" --resume \
        --set train.steps=30 --set optimizer.lion.lr=1e-3 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -q "holds adamw state" || fail "optimizer switch: $rc $out"
  echo "resume: 10 + 10 steps == 20 steps, bit for bit"
  ;;
sequence)
  # Ulysses: parallel.sequence = S on S ranks (T = 32 tokens over 2, 3, 4 ranks; 4 heads over 3
  # ranks split 2, 1, 1) trains like one rank: the same training and validation losses within
  # 1e-5 relative, every step. Also without the kept tensors, with recompute, data=2 x
  # sequence=2 on 4 ranks against data=2 on 2, and --resume bit-identical.
  J=(--set model.gpt.n_head=4)
  # close A B KEY COUNT: the KEY values of two metrics files agree within 1e-5 relative
  close() {
    paste <(grep -o "\"$3\": [0-9.e+-]*" "$1" | cut -d' ' -f2) \
          <(grep -o "\"$3\": [0-9.e+-]*" "$2" | cut -d' ' -f2) |
      awk -v want="$4" '{ n++; d = $1 - $2; if (d < 0) d = -d; r = d / $2; if (r > worst) worst = r
                          if (r > 1e-5) { print "line " n ": " $1 " vs " $2; bad = 1 } }
           END { if (n != want || bad) exit 1; printf "%d values, largest relative difference %.2g\n", n, worst }'
  }
  $TRAINER "$JOB" "${DATA[@]}" "${J[@]}" --quiet --set output.metrics="$W/s1.jsonl" \
    || fail "1-rank run"
  for S in 2 3 4; do
    $MPIRUN -np $S "$TRAINER" "$JOB" "${DATA[@]}" "${J[@]}" --quiet --set parallel.sequence=$S \
      --set output.metrics="$W/s$S.jsonl" || fail "sequence=$S run"
    echo -n "sequence=$S loss: "; close "$W/s$S.jsonl" "$W/s1.jsonl" loss 20 || fail "sequence=$S losses"
    echo -n "sequence=$S val_loss: "; close "$W/s$S.jsonl" "$W/s1.jsonl" val_loss 4 \
      || fail "sequence=$S validation losses"
  done
  grep -q '"a2a_sent_bytes_per_layer": [1-9]' "$W/s2.jsonl" || fail "no all-to-all counters"
  i=0
  for v in "parallel.sequence_keep_exchanged=false" "train.recompute=true"; do
    i=$((i + 1))
    $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${J[@]}" --quiet --set parallel.sequence=2 \
      --set "$v" --set output.metrics="$W/v$i.jsonl" || fail "sequence=2 with $v"
    echo -n "sequence=2 $v: "; close "$W/v$i.jsonl" "$W/s1.jsonl" loss 20 || fail "$v losses"
  done
  # Without the kept tensors backward sends more: q, k, v, out, lse again.
  a=$(grep -o '"a2a_sent_bytes_per_layer": [0-9]*' "$W/s2.jsonl" | head -1 | cut -d' ' -f2)
  b=$(grep -o '"a2a_sent_bytes_per_layer": [0-9]*' "$W/v1.jsonl" | head -1 | cut -d' ' -f2)
  [ "$a" -gt 0 ] && [ "$b" -gt "$a" ] || fail "a2a bytes per layer: kept $a, re-exchanged $b"
  $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${J[@]}" --quiet --set parallel.data=2 \
    --set output.metrics="$W/d2.jsonl" || fail "data=2 run"
  $MPIRUN -np 4 "$TRAINER" "$JOB" "${DATA[@]}" "${J[@]}" --quiet --set parallel.data=2 \
    --set parallel.sequence=2 --set output.metrics="$W/d2s2.jsonl" || fail "data=2 x sequence=2 run"
  echo -n "data=2 x sequence=2: "; close "$W/d2s2.jsonl" "$W/d2.jsonl" loss 20 || fail "2x2 losses"
  K=(--set parallel.sequence=2 --set checkpoint.dir="$W/sk")
  $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${J[@]}" "${K[@]}" --quiet --stop_after 10 \
    --set output.metrics="$W/sr.jsonl" || fail "first half"
  $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${J[@]}" "${K[@]}" --quiet --resume \
    --set output.metrics="$W/sr.jsonl" || fail "resumed half"
  diff <(losses "$W/s2.jsonl") <(losses "$W/sr.jsonl") || fail "sequence=2: resumed metrics differ"
  # Bad input, on every rank, before anything runs.
  out=$($MPIRUN -np 4 "$TRAINER" "$JOB" "${DATA[@]}" --set parallel.sequence=4 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -q "model.gpt.n_head" || fail "4 ranks for 2 heads: rc $rc: $out"
  out=$($MPIRUN -np 4 "$TRAINER" "$JOB" "${DATA[@]}" "${J[@]}" --set parallel.sequence=4 \
        --set train.seq_len=3 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -q "train.seq_len = 3" || fail "T < P: rc $rc: $out"
  out=$($MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${J[@]}" --set parallel.sequence=3 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -q "parallel.sequence" || fail "3 sequence ranks of 2: rc $rc: $out"
  # A model from a file whose max_seq_len the sequence would exceed: refused on every rank (each
  # rank prepares only its share of T, which must not hide it).
  $TRAINER "$JOB" "${DATA[@]}" "${J[@]}" --quiet --set train.steps=1 --set checkpoint.dir="$W/m" \
    || fail "model for init_from"
  out=$($MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" --set model.init_from="$W/m/step_00000001" \
        --set parallel.sequence=2 --set train.seq_len=96 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -q "train.seq_len = 96 exceeds the model's max_seq_len = 64" \
    || fail "seq_len beyond an init_from model's max_seq_len: rc $rc: $out"
  echo "sequence: 2, 3, 4 ranks, keep off, recompute and data=2 x sequence=2 match; resume is bit-identical"
  ;;
dp)
  $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" --quiet --set parallel.data=2 \
    --set output.metrics="$W/dp.jsonl" || fail "2-rank run"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set train.batch_size=4 \
    --set output.metrics="$W/one.jsonl" || fail "1-rank run"
  paste <(losses "$W/dp.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) \
        <(losses "$W/one.jsonl" | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2) |
    awk '{ n++; d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $2) { print "step " n ": " $1 " vs " $2; bad = 1 } }
         END { if (n != 20 || bad) exit 1; print "dp: 20 steps within 1e-5 relative" }' \
    || fail "data-parallel losses differ from the single-process run"
  ;;
bad)
  OUT=(--set checkpoint.dir="$W/out/ckpt" --set output.metrics="$W/out/m.jsonl")
  printf 'train {\n  stepz: 3\n}\n' > "$W/bad.pbtxt"
  expect_bad "bad.pbtxt:2:8:" $TRAINER "$W/bad.pbtxt"
  printf 'train { steps: "ten" }\n' > "$W/bad2.pbtxt"
  expect_bad "bad2.pbtxt:1:16:" $TRAINER "$W/bad2.pbtxt"
  expect_bad "started with 2 ranks" $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${OUT[@]}"
  expect_bad 'train.device = "tpu"' $TRAINER "$JOB" "${DATA[@]}" "${OUT[@]}" --set train.device=tpu
  expect_bad "train.precision = BF16" $TRAINER "$JOB" "${DATA[@]}" "${OUT[@]}" \
    --set train.precision=BF16
  # A damaged file on one rank only: both ranks stop with exit 2, the error is printed once, and
  # an existing metrics file is left as it was.
  mkdir -p "$W/keep"; echo '{"step": 1, "loss": 1}' > "$W/keep/m.jsonl"
  cp "$W/doc_train.bin" "$W/r0.bin"; head -c 2000 "$W/doc_train.bin" > "$W/r1.bin"
  out=$($MPIRUN -np 2 bash -c 'exec "$0" "$@" --set data.train_tokens=$W_DIR/r$OMPI_COMM_WORLD_RANK.bin' \
        "$TRAINER" "$JOB" --set data.val_tokens="$W/doc_val.bin" --set parallel.data=2 \
        --set output.metrics="$W/keep/m.jsonl" 2>&1); rc=$?
  [ $rc = 2 ] || fail "a damaged file on rank 1: rc $rc: $out"
  [ "$(echo "$out" | grep -c "r1.bin")" = 1 ] || fail "error not printed once: $out"
  [ "$(cat "$W/keep/m.jsonl")" = '{"step": 1, "loss": 1}' ] || fail "metrics file was touched"
  expect_bad "optimizer.adamw.lr = -1: must be > 0" $TRAINER "$JOB" "${DATA[@]}" "${OUT[@]}" \
    --set optimizer.adamw.lr=-1
  expect_bad "data.train_tokens = \"$W/nope.bin\": no such file" $TRAINER "$JOB" "${DATA[@]}" \
    "${OUT[@]}" --set data.train_tokens="$W/nope.bin"
  head -c 1100 "$W/doc_train.bin" > "$W/short.bin"
  expect_bad "truncated or corrupt" $TRAINER "$JOB" "${OUT[@]}" --set data.train_tokens="$W/short.bin"
  printf "0123456789a" > "$W/tiny.txt"; "$BUILD/make_tokens" "$W/tiny.txt" "$W/tiny" >/dev/null

  expect_bad "fewer than" $TRAINER "$JOB" "${OUT[@]}" --set data.train_tokens="$W/tiny_train.bin"
  # --check runs the run's data checks: too little data for a batch, tokens outside the vocabulary.
  expect_bad "fewer than" $TRAINER "$JOB" "${OUT[@]}" --set data.train_tokens="$W/tiny_train.bin" \
    --check
  expect_bad "outside the model's vocabulary (vocab_size = 64)" $TRAINER "$JOB" "${DATA[@]}" \
    "${OUT[@]}" --set model.gpt.vocab_size=64 --check
  # A model far larger than the memory: refused at once, before allocating, with the estimate per
  # tag, the available memory and what to change (not the kernel's OOM killer after minutes).
  start=$(date +%s)
  for c in "" --check; do
    expect_bad "is available" $TRAINER "$JOB" "${DATA[@]}" "${OUT[@]}" $c \
      --set model.gpt.n_layer=100000000
    for want in "params" "optimizer" "activations" "train.batch_size" "smaller model"; do
      echo "$out" | grep -qF "$want" || fail "memory refusal lacks '$want': $out"
    done
  done
  [ $(($(date +%s) - start)) -le 10 ] || fail "the memory refusal took $(($(date +%s) - start)) s"
  expect_bad "no checkpoint to resume from" $TRAINER "$JOB" "${DATA[@]}" "${OUT[@]}" --resume
  expect_bad "unknown option --frobnicate" $TRAINER "$JOB" --frobnicate
  # A damaged checkpoint is refused, never loaded half.
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/c" --stop_after 2 \
    || fail "checkpoint run"
  f="$W/c/step_00000002/model.safetensors"  # one byte of the weights, near the end
  printf x | dd of="$f" bs=1 seek=$(($(stat -c %s "$f") - 100)) conv=notrunc 2>/dev/null
  out=$($TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/c" --resume 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -q "CRC-32" || fail "damaged checkpoint: rc $rc: $out"
  echo "bad: every case exits 2 with a clear message and writes nothing"
  ;;
tools)
  out=$($TRAINER "$JOB" "${DATA[@]}" --check) || fail "--check"
  echo "$out" | grep -q "grad_accum: 2" || fail "--check does not print the effective spec"
  echo "$out" | grep -Eq "^# memory estimate per rank: params .*; total .*; available" \
    || fail "--check does not print the memory estimate: $out"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/t" --set train.steps=5 \
    --set output.metrics="$W/t.jsonl" || fail "short run"
  $TRAINER sample "$W/t" --prompt "In the" --tokens 40 --seed 2 > "$W/s.txt" || fail "sample"
  # The prompt, 40 generated bytes, a newline.
  [ "$(head -c 6 "$W/s.txt")" = "In the" ] && [ "$(stat -c %s "$W/s.txt")" = 47 ] \
    || fail "sample output: $(od -c "$W/s.txt" | head -3)"
  # Streamed: the first bytes arrive while the (endless) rest is still being generated.
  first=$(timeout 60 $TRAINER sample "$W/t" --prompt "In the" --tokens 100000000 | head -c 8 | wc -c)
  [ "$first" = 8 ] || fail "sample does not stream its output (got $first bytes)"
  $TRAINER export "$W/t" "$W/t.bin" >/dev/null || fail "export"
  # Never over an existing file without --force, least of all the checkpoint's own files.
  own="$W/t/step_00000005/model.safetensors"; sum=$(md5sum < "$own")
  out=$($TRAINER export "$W/t" "$own" 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -qF "$own" && echo "$out" | grep -qF -- "--force" \
    || fail "export onto the checkpoint: rc $rc: $out"
  [ "$(md5sum < "$own")" = "$sum" ] || fail "export overwrote the checkpoint's weights"
  out=$($TRAINER export "$W/t" "$W/t.bin" 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -qF -- "--force" || fail "export over a file: rc $rc: $out"
  $TRAINER export "$W/t" "$W/t.bin" --force >/dev/null || fail "export --force"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set model.init_from="$W/t.bin" --set train.steps=2 \
    || fail "init_from an exported llm.c file"
  # eval_at_start: starting from the short run's weights, the first validation is the one that
  # run ended with (the same weights, the same validation batches).
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set model.init_from="$W/t/step_00000005" --set train.steps=1 \
    --set train.eval_at_start=true --set output.metrics="$W/e.jsonl" || fail "eval_at_start"
  end=$(grep '"step": 5, "val_loss"' "$W/t.jsonl" | grep -o '"val_loss": [-0-9.e+]*')
  start=$(grep '"step": 0, "val_loss"' "$W/e.jsonl" | grep -o '"val_loss": [-0-9.e+]*')
  [ -n "$end" ] && [ "$start" = "$end" ] || fail "eval_at_start: '$start' against the end of the run it starts from: '$end'"
  if command -v gnuplot >/dev/null; then
    "$SRC/scripts/plot_metrics.sh" "$W/t.jsonl" "$W/t.png" >/dev/null || fail "plot"
    [ -s "$W/t.png" ] || fail "plot wrote no PNG"
  fi
  # BPE data: tokens from a learned vocabulary, a model with that vocab_size, decoded samples.
  "$BUILD/make_tokens" "$SRC/tests/data/sample.txt" "$W/bpe" --bpe 320 >/dev/null || fail "bpe"
  # The same text in the saved vocabulary (--vocab): the same token files.
  "$BUILD/make_tokens" "$SRC/tests/data/sample.txt" "$W/again" --vocab "$W/bpe_vocab.json" \
    >/dev/null || fail "make_tokens --vocab"
  cmp -s "$W/bpe_train.bin" "$W/again_train.bin" && cmp -s "$W/bpe_val.bin" "$W/again_val.bin" \
    || fail "--vocab encodes differently from the run that learned the vocabulary"
  out=$("$BUILD/make_tokens" "$SRC/tests/data/sample.txt" "$W/x" --vocab "$W/nothing.json" 2>&1)
  [ $? = 2 ] && echo "$out" | grep -q "nothing.json" || fail "--vocab of a missing file: $out"
  $TRAINER "$JOB" --quiet --set data.train_tokens="$W/bpe_train.bin" \
    --set data.val_tokens="$W/bpe_val.bin" --set model.gpt.vocab_size=320 --set train.steps=3 \
    --set checkpoint.dir="$W/bpeck" || fail "training on BPE tokens"
  $TRAINER sample "$W/bpeck" --vocab "$W/bpe_vocab.json" --prompt "And God" --tokens 10 \
    > "$W/bs.txt" || fail "sample with a BPE vocabulary"
  [ "$(head -c 7 "$W/bs.txt")" = "And God" ] || fail "BPE sample: $(head -c 80 "$W/bs.txt")"
  out=$($TRAINER sample "$W/bpeck" 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -q "give the BPE vocabulary" || fail "no --vocab: $rc $out"
  out=$($TRAINER "$JOB" "${DATA[@]}" --quiet --set optimizer.adamw.lr=1e30 2>&1); rc=$?
  [ $rc = 1 ] && echo "$out" | grep -q "training loss is" || fail "diverging run: rc $rc: $out"
  echo "tools: --check, sample, export, init_from, plot work; a diverging run stops with exit 1"
  ;;
retention)
  # A 20-step run, then a 10-step run of the same job into the same folder: the second keeps what
  # it wrote (steps 5 and 10), not the higher steps of the first.
  K=(--set checkpoint.dir="$W/r" --set checkpoint.every=5 --set checkpoint.keep=2)
  $TRAINER "$JOB" "${DATA[@]}" "${K[@]}" --quiet || fail "20-step run"
  [ "$(ckpts "$W/r")" = "step_00000015 step_00000020 " ] || fail "after 20 steps: $(ckpts "$W/r")"
  $TRAINER "$JOB" "${DATA[@]}" "${K[@]}" --quiet --set train.steps=10 || fail "10-step run"
  [ "$(ckpts "$W/r")" = "step_00000005 step_00000010 " ] || fail "after 10 steps: $(ckpts "$W/r")"
  [ "$(cat "$W/r/latest")" = step_00000010 ] || fail "latest: $(cat "$W/r/latest")"
  $TRAINER sample "$W/r" --tokens 4 >/dev/null || fail "sample from the folder"
  $TRAINER "$JOB" "${DATA[@]}" "${K[@]}" --quiet --set train.steps=12 --resume || fail "resume"
  # Resuming from a lower step (latest set back by hand) and saving every step: what this run
  # writes is kept, not the stale step 20 of the earlier run.
  rm -rf "$W/r"
  $TRAINER "$JOB" "${DATA[@]}" "${K[@]}" --quiet || fail "20-step run (2)"
  printf step_00000015 > "$W/r/latest"
  $TRAINER "$JOB" "${DATA[@]}" "${K[@]}" --quiet --resume --set checkpoint.every=1 \
    --stop_after 17 || fail "resumed at 15"
  [ "$(ckpts "$W/r")" = "step_00000016 step_00000017 " ] || fail "after resuming: $(ckpts "$W/r")"
  [ "$(cat "$W/r/latest")" = step_00000017 ] || fail "latest after resuming: $(cat "$W/r/latest")"
  echo "retention: the checkpoints written last are kept"
  ;;
nonfinite)
  # lr = 1e3 diverges within a few steps (with n_embd 256 the gradients of step 8 are NaN, which
  # used to reach the weights and the checkpoint `latest` named). Default STOP: exit 1, naming the
  # step and the field to change; no checkpoint holds a NaN and latest names a loadable one.
  H=(--set optimizer.adamw.lr=1e3 --set checkpoint.every=1 --set checkpoint.keep=100
     --set model.gpt.n_embd=256 --set model.gpt.n_head=4 --set train.steps=10)
  out=$($TRAINER "$JOB" "${DATA[@]}" "${H[@]}" --quiet --set checkpoint.dir="$W/n" \
        --set output.metrics="$W/n.jsonl" 2>&1); rc=$?
  [ $rc = 1 ] || fail "diverging run: rc $rc: $out"
  echo "$out" | grep -q "train.on_nonfinite" || fail "message: $out"
  check_json "$W/n.jsonl"
  check_finite "$W/n"
  grep -q '"skipped": true' "$W/n.jsonl" || fail "the non-finite step is not in the metrics"
  latest=$(cat "$W/n/latest") || fail "no checkpoint before the divergence"
  $TRAINER export "$W/n" "$W/n.bin" >/dev/null || fail "latest ($latest) does not load"
  # SKIP: the run goes on, the skipped steps are in the metrics, every checkpoint is finite.
  $TRAINER "$JOB" "${DATA[@]}" "${H[@]}" --quiet --set checkpoint.dir="$W/s" \
    --set output.metrics="$W/s.jsonl" --set train.on_nonfinite=SKIP \
    --set train.max_consecutive_skips=0 || fail "SKIP run"
  check_json "$W/s.jsonl"
  check_finite "$W/s"
  grep -q '"skipped": true' "$W/s.jsonl" || fail "no skipped step in the metrics"
  grep -q '"event": "end", "step": 10, "skipped_steps": [1-9]' "$W/s.jsonl" \
    || fail "end line: $(tail -1 "$W/s.jsonl")"
  # The run before this fix logged "grad_norm": -nan; every line parses now, ordinary runs too.
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set train.steps=3 --set output.metrics="$W/ok.jsonl" \
    || fail "ordinary run"
  check_json "$W/ok.jsonl"
  echo "nonfinite: no NaN reaches a checkpoint; SKIP skips; every metrics line is JSON"
  ;;
outputs)
  M=(--set output.metrics="$W/out/m.jsonl")
  # A folder as the job spec, with and without --set.
  mkdir -p "$W/jobdir"
  expect_bad "is a directory" $TRAINER "$W/jobdir" "${M[@]}"
  expect_bad "is a directory" $TRAINER "$W/jobdir" "${DATA[@]}" "${M[@]}"
  # Outputs that cannot be written are refused before training, naming the field.
  touch "$W/afile"
  expect_bad "checkpoint.dir" $TRAINER "$JOB" "${DATA[@]}" "${M[@]}" --set checkpoint.dir="$W/afile"
  expect_bad "checkpoint.dir" $TRAINER "$JOB" "${DATA[@]}" "${M[@]}" \
    --set checkpoint.dir="$W/afile/ck"
  expect_bad "output.metrics" $TRAINER "$JOB" "${DATA[@]}" --set output.metrics="$W/jobdir"
  expect_bad "output.metrics" $TRAINER "$JOB" "${DATA[@]}" --set checkpoint.dir="$W/out/ck" \
    --set output.metrics="$W/afile/m.jsonl"
  # A bad --set value: one clean message, no raw protobuf log line.
  expect_bad "is not a valid" $TRAINER "$JOB" "${DATA[@]}" "${M[@]}" --set train.steps=abc
  echo "$out" | grep -q "libprotobuf" && fail "raw protobuf log: $out"
  # A metrics write error (a full disk) stops the run, naming the file.
  out=$($TRAINER "$JOB" "${DATA[@]}" --quiet --set train.steps=3 --set output.metrics=/dev/full \
        2>&1); rc=$?
  [ $rc = 1 ] && echo "$out" | grep -q "/dev/full" || fail "metrics on a full disk: rc $rc: $out"
  # A checkpoint write error (files limited to 20 KiB) stops the run naming the file, and leaves
  # no temporary folder; the previous checkpoint stays.
  F=(--quiet --set checkpoint.dir="$W/fs" --set train.steps=2)
  $TRAINER "$JOB" "${DATA[@]}" "${F[@]}" --stop_after 1 || fail "first step"
  out=$(ulimit -f 20; trap '' XFSZ; $TRAINER "$JOB" "${DATA[@]}" "${F[@]}" --resume 2>&1); rc=$?
  [ $rc = 1 ] && echo "$out" | grep -q "$W/fs/step_00000002.*safetensors" \
    || fail "checkpoint write error: rc $rc: $out"
  no_tmp "$W/fs"
  [ "$(cat "$W/fs/latest")" = step_00000001 ] && [ "$(ckpts "$W/fs")" = "step_00000001 " ] \
    || fail "after a failed save: $(ckpts "$W/fs")"
  # Temporaries left by dead processes are removed at start; a completed run leaves none.
  bash -c 'exit 0' & wait $!; dead=$!
  mkdir -p "$W/t/step_00000003.tmp.$dead"; touch "$W/t/latest.tmp.$dead"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/t" --set train.steps=4 \
    --set checkpoint.every=2 || fail "run after a crash"
  no_tmp "$W/t"
  [ "$(ckpts "$W/t")" = "step_00000002 step_00000004 " ] || fail "checkpoints: $(ckpts "$W/t")"
  echo "outputs: refused at start, write errors stop the run, no temporaries are left"
  ;;
ranks)
  # Ranks given different jobs, options or builds stop at once (no hang) with exit 2, rank 0
  # naming the ranks and the first field that differs.
  P=("$JOB" "${DATA[@]}" --quiet --set parallel.data=2)
  out=$(timeout 120 $MPIRUN -np 1 "$TRAINER" "${P[@]}" --set train.steps=5 \
        : -np 1 "$TRAINER" "${P[@]}" --set train.steps=6 2>&1); rc=$?
  [ $rc = 2 ] || fail "another train.steps on rank 1: rc $rc: $out"
  echo "$out" | grep -q "train.steps = 5 on rank 0 but 6 on rank 1" || fail "message: $out"
  [ "$(echo "$out" | grep -c "disagree")" = 1 ] || fail "not printed once: $out"
  out=$(timeout 120 $MPIRUN -np 1 "$TRAINER" "${P[@]}" \
        : -np 1 "$TRAINER" "${P[@]}" --set model.gpt.n_embd=64 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -q "model.gpt.n_embd = 32 on rank 0 but 64 on rank 1" \
    || fail "another n_embd on rank 1: rc $rc: $out"
  out=$(timeout 120 $MPIRUN -np 1 "$TRAINER" "${P[@]}" \
        : -np 1 "$TRAINER" "${P[@]}" --stop_after 3 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -q "different options" || fail "--stop_after on rank 1: $rc $out"
  if command -v objcopy >/dev/null && objcopy --remove-section=.note.gnu.build-id \
      "$TRAINER" "$W/trainer2" 2>/dev/null; then
    out=$(timeout 120 $MPIRUN -np 1 "$TRAINER" "${P[@]}" : -np 1 "$W/trainer2" "${P[@]}" 2>&1)
    rc=$?
    [ $rc = 2 ] && echo "$out" | grep -q "different trainer builds" || fail "build: $rc $out"
  fi
  $MPIRUN -np 2 "$TRAINER" "${P[@]}" --set train.steps=2 || fail "agreeing ranks"
  echo "ranks: disagreeing ranks stop with exit 2 naming the field"
  ;;
damaged)
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/d" --set train.steps=6 \
    --set checkpoint.every=2 || fail "first run"
  # `latest` edited by hand, with a newline.
  echo step_00000006 > "$W/d/latest"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/d" --set train.steps=8 \
    --set checkpoint.every=2 --resume || fail "latest with a newline"
  [ "$(cat "$W/d/latest")" = step_00000008 ] || fail "latest: $(cat "$W/d/latest")"
  # The newest checkpoint damaged: the message names --resume_from with the one before it.
  f="$W/d/step_00000008/model.safetensors"
  printf x | dd of="$f" bs=1 seek=$(($(stat -c %s "$f") - 100)) conv=notrunc 2>/dev/null
  out=$($TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/d" --set train.steps=10 \
        --set checkpoint.every=2 --resume 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -qF -- "--resume_from $W/d/step_00000006" \
    || fail "damaged latest: rc $rc: $out"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/d" --set train.steps=10 \
    --set checkpoint.every=2 --resume_from "$W/d/step_00000006" --set output.metrics="$W/d.jsonl" \
    || fail "--resume_from"
  [ "$(cat "$W/d/latest")" = step_00000010 ] || fail "latest after --resume_from"
  grep -q '"event": "start", "step": 6' "$W/d.jsonl" || fail "did not resume at step 6"
  out=$($TRAINER "$JOB" "${DATA[@]}" --quiet --resume_from "$W/d" 2>&1); rc=$?
  [ $rc = 2 ] && echo "$out" | grep -q "not a checkpoint folder" || fail "--resume_from dir: $out"
  echo "damaged: latest with a newline loads; --resume_from resumes from an older checkpoint"
  ;;
signals)
  # wait_step FILE N: until the metrics file has reached step N (at most ~20 s).
  wait_step() {
    for _ in $(seq 400); do grep -q "\"step\": $2," "$1" 2>/dev/null && return 0; sleep 0.05; done
    fail "never reached step $2"
  }
  S=(--quiet --set train.steps=400 --set train.eval_every=100)
  $TRAINER "$JOB" "${DATA[@]}" "${S[@]}" --set checkpoint.dir="$W/u" --set output.metrics="$W/u.jsonl" \
    || fail "uninterrupted run"
  $TRAINER "$JOB" "${DATA[@]}" "${S[@]}" --set checkpoint.dir="$W/i" \
    --set output.metrics="$W/i.jsonl" & pid=$!
  wait_step "$W/i.jsonl" 30
  kill -TERM $pid; wait $pid; rc=$?
  [ $rc = 143 ] || fail "SIGTERM: exit $rc (want 143)"
  stopped=$(grep -o '"event": "stopped", "step": [0-9]*' "$W/i.jsonl" | grep -o '[0-9]*$')
  [ -n "$stopped" ] && [ "$stopped" -lt 400 ] || fail "no stop line: $(tail -2 "$W/i.jsonl")"
  [ "$(cat "$W/i/latest")" = "$(printf step_%08d "$stopped")" ] || fail "latest: $(cat "$W/i/latest")"
  no_tmp "$W/i"
  $TRAINER "$JOB" "${DATA[@]}" "${S[@]}" --set checkpoint.dir="$W/i" \
    --set output.metrics="$W/i.jsonl" --resume || fail "resume after SIGTERM"
  diff <(losses "$W/u.jsonl") <(losses "$W/i.jsonl") || fail "metrics differ after SIGTERM"
  for f in model.safetensors optimizer.safetensors; do
    cmp "$W/u/step_00000400/$f" "$W/i/step_00000400/$f" || fail "$f differs after SIGTERM"
  done
  # Under mpirun: both ranks signalled (as a scheduler does), both stop after the same step.
  P=(--set parallel.data=2 --set train.batch_size=1)
  $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${S[@]}" "${P[@]}" --set checkpoint.dir="$W/mu" \
    --set output.metrics="$W/mu.jsonl" || fail "uninterrupted 2-rank run"
  $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${S[@]}" "${P[@]}" --set checkpoint.dir="$W/mi" \
    --set output.metrics="$W/mi.jsonl" & mpid=$!
  wait_step "$W/mi.jsonl" 30
  ranks=$(pgrep -P $mpid)
  [ -n "$ranks" ] || fail "no ranks under mpirun"
  kill -TERM $ranks; wait $mpid; rc=$?
  [ $rc != 0 ] || fail "mpirun exit 0 after SIGTERM"
  grep -q '"event": "stopped"' "$W/mi.jsonl" || fail "2 ranks: no stop line"
  $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${S[@]}" "${P[@]}" --set checkpoint.dir="$W/mi" \
    --set output.metrics="$W/mi.jsonl" --resume || fail "2 ranks: resume after SIGTERM"
  diff <(losses "$W/mu.jsonl") <(losses "$W/mi.jsonl") || fail "2 ranks: metrics differ"
  for f in model.safetensors optimizer.safetensors; do
    cmp "$W/mu/step_00000400/$f" "$W/mi/step_00000400/$f" || fail "2 ranks: $f differs"
  done
  echo "signals: SIGTERM saves after the step and exits 143; resuming is bit-identical"
  ;;
federated)
  FM=/usr/share/datasets/fashion-mnist
  if [ ! -e "$FM/train-images-idx3-ubyte.gz" ] && [ ! -e "$FM/train-images-idx3-ubyte" ]; then
    echo "federated: skipped: no Fashion-MNIST in $FM (apt install dataset-fashion-mnist)"
    exit 77
  fi
  FED="$W/fed.pbtxt"
  # One rank computes with 2 threads, each of two ranks with 1 (as their share of 2 cores would
  # be): the -np 2 comparisons below also hold the model to the same bits on any thread count.
  TWO_THREADS="env MEMTRAIN_THREADS=2"
  # Batch 64: the head's product (64 x 10 x 784) is above OpenBLAS's threshold for threading, so
  # a head computed with one plain sgemm would differ between the runs (checked: it fails then).
  cat > "$FED" <<'EOF'
model { cnn { layers: [8, -1, 16, -1] } }
train { steps: 3 }
optimizer { sgd { lr: 0.05 momentum: 0.9 } }
federated { num_clients: 20 clients_per_round: 4 batch_size: 64 }
EOF
  run() {  # run NAME [mpirun -np N] TRAINER ARGS...
    local name=$1; shift
    "$@" --quiet --set checkpoint.dir="$W/$name" --set output.metrics="$W/$name.jsonl" \
      || fail "federated run $name"
    check_json "$W/$name.jsonl"
  }
  # The rounds' metrics without the events, the timing and the memory.
  rounds() { grep -v '"event"' "$1" | sed -E 's/, "peak_client_mib": [0-9.]+, "round_ms": [0-9.]+//'; }
  out=$($TRAINER "$FED" --check) || fail "federated --check"
  echo "$out" | grep -Eq "^# memory estimate per rank: params .*, activations .*, FedAvg buffers .*, Fashion-MNIST .*; total [0-9.]+ MiB; available" \
    || fail "federated --check does not print the memory estimate: $out"
  est=$(echo "$out" | grep -o '; total [0-9.]* MiB' | grep -o '[0-9.]*')
  # The run's peak RSS against the estimate. Above: at most 32 MiB more (OpenBLAS and MPI, which
  # no estimate counts) once the binary's own RSS (`--help`; with CUDA built in, its libraries
  # alone map about 200 MiB) is taken off. Below: at least the estimate less 64 MiB (the estimate
  # adds the training split's raw IDX bytes, 45 MiB, held only while loading, to the loaded data;
  # how much of the libraries a run touches varies, so nothing is taken off here).
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f %M -o "$W/base.rss" $TRAINER --help >/dev/null 2>&1
    base=$(tail -1 "$W/base.rss")
    run one $TWO_THREADS /usr/bin/time -f %M -o "$W/one.rss" $TRAINER "$FED"
    rss=$(tail -1 "$W/one.rss")
    awk -v r="$rss" -v b="$base" -v e="$est" \
      'BEGIN { exit !((r - b) / 1024 <= e + 32 && r / 1024 >= e - 64) }' \
      || fail "federated: peak RSS $rss KiB (less $base KiB of --help) is not within" \
              "[-64, +32] MiB of the estimate $est MiB"
    echo "federated: peak RSS $((rss / 1024)) MiB less $((base / 1024)) MiB, estimate $est MiB"
  else
    run one $TWO_THREADS $TRAINER "$FED"
  fi
  [ "$(rounds "$W/one.jsonl" | wc -l)" = 3 ] || fail "federated: not 3 rounds: $(cat "$W/one.jsonl")"
  acc=$(grep -o '"test_accuracy": [0-9.]*' "$W/one.jsonl" | cut -d' ' -f2 | tr '\n' ' ')
  echo "$acc" | awk '{ if (!($NF > 0.5 && $NF > $1)) exit 1 }' \
    || fail "federated: test accuracy does not rise above 0.5: $acc"
  for f in partition.json step_00000003/model.safetensors step_00000003/state.json; do
    [ -s "$W/one/$f" ] || fail "federated: no $f in checkpoint.dir"
  done
  # Two ranks: the clients dealt over them, the same model bit for bit.
  run two $MPIRUN -np 2 "$TRAINER" "$FED" --set parallel.data=2
  for f in partition.json step_00000003/model.safetensors; do
    cmp -s "$W/one/$f" "$W/two/$f" || fail "federated: -np 2 $f differs from -np 1"
  done
  diff <(rounds "$W/one.jsonl") <(rounds "$W/two.jsonl") \
    || fail "federated: -np 2 metrics differ from -np 1"
  # FedTiny (adaptive BN selection, then an adjustment every round): 2 + 1 rounds with --resume
  # end bit-identical to 3, masks included.
  T=(--set federated.pruning.method=FEDTINY --set federated.pruning.density=0.3
     --set federated.pruning.candidates=2 --set federated.pruning.bn_batches=2
     --set federated.pruning.adjust_rounds=3 --set federated.eval_every=0)
  run tiny $TWO_THREADS $TRAINER "$FED" "${T[@]}"
  grep -q '"event": "pruning", "step": 0, "chosen_candidate": [01]' "$W/tiny.jsonl" \
    || fail "federated: no pruning line: $(head -3 "$W/tiny.jsonl")"
  grep '"step": 3,' "$W/tiny.jsonl" | grep -q '"density": 0.[23]' || fail "federated: density"
  grep '"step": 1,' "$W/tiny.jsonl" | grep -q '"prune_bytes_up": [1-9]' \
    || fail "federated: no FedTiny messages in round 1"
  run split $TWO_THREADS $TRAINER "$FED" "${T[@]}" --stop_after 2
  [ "$(cat "$W/split/latest")" = step_00000002 ] || fail "federated: --stop_after 2 saved no round 2"
  run split $TWO_THREADS $TRAINER "$FED" "${T[@]}" --resume
  for f in model masks; do
    cmp -s "$W/tiny/step_00000003/$f.safetensors" "$W/split/step_00000003/$f.safetensors" \
      || fail "federated: resumed $f.safetensors differs from the uninterrupted run"
  done
  diff <(rounds "$W/tiny.jsonl") <(rounds "$W/split.jsonl") || fail "federated: resumed metrics differ"
  # FedTiny on two ranks (the gradient top-K heaps and BN statistics gathered over ranks): the
  # same masks and model as one.
  run tiny2 $MPIRUN -np 2 "$TRAINER" "$FED" "${T[@]}" --set parallel.data=2
  for f in model masks; do
    cmp -s "$W/tiny/step_00000003/$f.safetensors" "$W/tiny2/step_00000003/$f.safetensors" \
      || fail "federated: FedTiny on -np 2: $f.safetensors differs from -np 1"
  done
  out=$($TRAINER "$FED" "${T[@]}" --quiet --set checkpoint.dir="$W/split" --resume \
        --set train.steps=4 --set federated.seed=2 2>&1)
  [ $? = 2 ] && echo "$out" | grep -q "federated.seed = 2 but checkpoint" \
    || fail "federated: resume with another seed: $out"
  # Bad input: exit 2 naming the field or file, nothing written.
  O=(--set checkpoint.dir="$W/out/ck" --set output.metrics="$W/out/m.jsonl")
  expect_bad "federated.clients_per_round = 30 exceeds federated.num_clients = 20" \
    $TRAINER "$FED" "${O[@]}" --set federated.clients_per_round=30
  # A job far larger than the memory: refused at once, before the data is read, with the estimate
  # per tag, the available memory and the fields to lower.
  start=$(date +%s)
  for c in "" --check; do
    expect_bad "is available" $TRAINER "$FED" "${O[@]}" $c --set federated.batch_size=1000000 \
      --set 'model.cnn.layers=[4096, 4096, -1]'
    for want in "activations" "FedAvg buffers" "Fashion-MNIST" "federated.batch_size" \
                "model.cnn.layers" "federated.clients_per_round"; do
      echo "$out" | grep -qF "$want" || fail "federated memory refusal lacks '$want': $out"
    done
  done
  [ $(($(date +%s) - start)) -le 10 ] || fail "the memory refusal took $(($(date +%s) - start)) s"
  expect_bad "federated.pruning.density = 0: must be in (0, 1]" $TRAINER "$FED" "${O[@]}" \
    --set federated.pruning.method=ONE_SHOT --set federated.pruning.density=0
  expect_bad "data.fashion_mnist_dir = \"$W/nothing\"" \
    $TRAINER "$FED" "${O[@]}" --set data.fashion_mnist_dir="$W/nothing"
  mkdir -p "$W/fm"
  cp "$FM"/* "$W/fm/" && rm -f "$W"/fm/t10k-labels-idx1-ubyte*
  expect_bad "$W/fm/t10k-labels-idx1-ubyte" \
    $TRAINER "$FED" "${O[@]}" --set data.fashion_mnist_dir="$W/fm"
  expect_bad "federated.num_clients = 70000 exceeds the 60000 training samples" \
    $MPIRUN -np 2 "$TRAINER" "$FED" "${O[@]}" --set parallel.data=2 \
    --set federated.num_clients=70000 --set federated.clients_per_round=2
  echo "federated: test accuracy by round $acc; -np 2 == -np 1 bit for bit; FedTiny 2 + 1 rounds == 3 bit for bit; bad input refused"
  ;;
*) fail "unknown case $CASE" ;;
esac
