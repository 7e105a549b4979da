#!/usr/bin/env bash
# End-to-end tests of the trainer binary:
#   resume    10 + 10 steps (--stop_after, --resume) give bit-identical losses, weights and
#             optimizer state to 20 uninterrupted steps (shuffled data, accumulation, cosine lr)
#   dp        mpirun -np 2 with batch B matches one process with batch 2B (losses, 1e-5 relative)
#   bad       bad input: exit code 2, a message naming the field or file, nothing written
#   tools     --check, sample, export, a run initialised from the exported llm.c file, plot
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

"$BUILD/make_tokens" "$SRC/tests/data/sample.txt" "$W/doc" --val_fraction 0.1 >/dev/null \
  || fail "make_tokens"
DATA=(--set data.train_tokens="$W/doc_train.bin" --set data.val_tokens="$W/doc_val.bin")
# Metrics lines without the timing fields, which differ between runs.
losses() {
  grep -v '"event"' "$1" | sed -E 's/, "tokens_per_sec": [0-9.]+, "step_ms": [0-9.]+, "comm_wait_ms": [0-9.]+//'
}

case $CASE in
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
  expect_bad() {  # expect_bad "message" command...
    local want=$1; shift
    rm -rf "$W/out"
    out=$("$@" 2>&1); rc=$?
    [ $rc = 2 ] || fail "exit code $rc (want 2) for: $* -> $out"
    echo "$out" | grep -qF -- "$want" || fail "message lacks '$want': $out"
    [ ! -e "$W/out" ] || fail "something was written for: $*"
  }
  OUT=(--set checkpoint.dir="$W/out/ckpt" --set output.metrics="$W/out/m.jsonl")
  printf 'train {\n  stepz: 3\n}\n' > "$W/bad.pbtxt"
  expect_bad "bad.pbtxt:2:8:" $TRAINER "$W/bad.pbtxt"
  printf 'train { steps: "ten" }\n' > "$W/bad2.pbtxt"
  expect_bad "bad2.pbtxt:1:16:" $TRAINER "$W/bad2.pbtxt"
  expect_bad "started with 2 ranks" $MPIRUN -np 2 "$TRAINER" "$JOB" "${DATA[@]}" "${OUT[@]}"
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
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set checkpoint.dir="$W/t" --set train.steps=5 \
    --set output.metrics="$W/t.jsonl" || fail "short run"
  $TRAINER sample "$W/t" --prompt "In the" --tokens 40 --seed 2 > "$W/s.txt" || fail "sample"
  # The prompt, 40 generated bytes, a newline.
  [ "$(head -c 6 "$W/s.txt")" = "In the" ] && [ "$(stat -c %s "$W/s.txt")" = 47 ] \
    || fail "sample output: $(od -c "$W/s.txt" | head -3)"
  $TRAINER export "$W/t" "$W/t.bin" >/dev/null || fail "export"
  $TRAINER "$JOB" "${DATA[@]}" --quiet --set model.init_from="$W/t.bin" --set train.steps=2 \
    || fail "init_from an exported llm.c file"
  if command -v gnuplot >/dev/null; then
    "$SRC/scripts/plot_metrics.sh" "$W/t.jsonl" "$W/t.png" >/dev/null || fail "plot"
    [ -s "$W/t.png" ] || fail "plot wrote no PNG"
  fi
  # BPE data: tokens from a learned vocabulary, a model with that vocab_size, decoded samples.
  "$BUILD/make_tokens" "$SRC/tests/data/sample.txt" "$W/bpe" --bpe 320 >/dev/null || fail "bpe"
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
*) fail "unknown case $CASE" ;;
esac
