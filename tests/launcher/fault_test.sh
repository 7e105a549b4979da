#!/usr/bin/env bash
# Fault injection: the tiny job (20 steps) with a checkpoint every step, killed again and again at
# random moments by SIGKILL or SIGTERM (a random choice), each time restarted with --resume once a
# checkpoint exists, until a run completes. Checked:
#   after every kill  `latest` names a checkpoint that exists and whose files match the sizes and
#                     CRC-32s of its state.json (checked here with Python's zlib, independently of
#                     the trainer, which checks them again when it resumes: a refused resume fails);
#                     no temporary older than the killed process is left once that process got past
#                     its start-up cleanup
#   after a SIGTERM   exit 143 and, when the stop handler was already installed, a checkpoint of the
#                     step it stopped after (`latest`, the "stopped" metrics line) and no temporary;
#                     a SIGTERM during the final step may let the run complete (exit 0)
#   at the end        model.safetensors and optimizer.safetensors of step 20 are byte-identical to
#                     an uninterrupted run's, the losses after the last resume (and the whole
#                     metrics history) match it, and no temporary (*.tmp.*, step_N.old) is left
# The kill delays are drawn from the shell's RANDOM, seeded from FAULT_SEED (default fixed, printed
# in the log) and spread over the expected duration of each run (from the uninterrupted run,
# measured first). At most FAULT_CYCLES (25) runs and about FAULT_BUDGET_S (40) seconds of
# killing; then one last run resumes without a kill. A run that completes before FAULT_MIN_KILLS
# (8) kills were made starts the faulted run over from scratch. About 15 s on 2 busy cores.
# Usage: fault_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=$1 SRC=$2
TRAINER=$BUILD/trainer
JOB=$SRC/tests/launcher/tiny.pbtxt
SEED=${FAULT_SEED:-20250611}
MAX_CYCLES=${FAULT_CYCLES:-25}
BUDGET_S=${FAULT_BUDGET_S:-40}
MIN_KILLS=${FAULT_MIN_KILLS:-8}
W=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; rm -rf "$W"' EXIT
export MEMTRAIN_THREADS=1
# To stderr: also from the $(...) of check_latest, whose caller then exits.
fail() { echo "FAIL: $* (seed $SEED; rerun with FAULT_SEED=$SEED)" >&2; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

"$BUILD/make_tokens" "$SRC/tests/data/sample.txt" "$W/doc" --val_fraction 0.1 >/dev/null \
  || fail "make_tokens"
DATA=(--set data.train_tokens="$W/doc_train.bin" --set data.val_tokens="$W/doc_val.bin")
# Metrics lines without the timing fields, which differ between runs (as in trainer_test.sh).
losses() {
  grep -v '"event"' "$1" | sed -E 's/, "tokens_per_sec": [0-9.]+, "step_ms": [0-9.]+, "peak_mib": [0-9.]+, "comm_wait_ms": [0-9.]+//'
}
# The same, only the lines of steps after $2.
losses_after() {
  losses "$1" | awk -v k="$2" 'match($0, /"step": [0-9]+/) &&
                                 substr($0, RSTART + 8, RLENGTH - 8) + 0 > k'
}
# The temporaries of checkpoint saves (and of the output probe) and step_N.old folders in $1.
tmps() { (cd "$1" 2>/dev/null && ls -d -- *.tmp.* .*.tmp.* *.old 2>/dev/null | sort); }
no_tmp() {
  local left; left=$(tmps "$1")
  [ -z "$left" ] || fail "$2: temporaries left in $1: $(echo $left)"
}
# The checkpoint folder $1 is complete: its state.json names its step, and both files have the
# sizes and CRC-32s it records (zlib's CRC-32, as the trainer computes it).
verify() {
  command -v python3 >/dev/null || return 0  # the trainer's own check on --resume remains
  python3 - "$1" <<'EOF' || fail "$2: checkpoint $1 does not verify"
import json, os, sys, zlib
d = sys.argv[1]
m = json.load(open(os.path.join(d, "state.json")))
want = int(os.path.basename(d)[5:])
if m.get("step") != want: sys.exit("%s: state.json says step %s" % (d, m.get("step")))
files = m.get("files", {})
if sorted(files) != ["model.safetensors", "optimizer.safetensors"]: sys.exit("files: %s" % files)
for name, e in files.items():
    b = open(os.path.join(d, name), "rb").read()
    if len(b) != e["bytes"]:
        sys.exit("%s/%s: %d bytes, state.json says %d" % (d, name, len(b), e["bytes"]))
    c = zlib.crc32(b) & 0xffffffff
    if c != e["crc32"]: sys.exit("%s/%s: CRC-32 %d, state.json says %d" % (d, name, c, e["crc32"]))
EOF
}
# `latest` in $1 names a checkpoint that exists and verifies; prints its step (0 if no `latest`).
check_latest() {
  [ -e "$1/latest" ] || { echo 0; return; }
  local name; name=$(cat "$1/latest")
  [[ $name =~ ^step_[0-9]{8}$ ]] || fail "$2: latest holds '$name'"
  [ -d "$1/$name" ] || fail "$2: latest names $name, which does not exist ($(ls "$1" | tr '\n' ' '))"
  verify "$1/$name" "$2"
  echo $((10#${name#step_}))
}

# The uninterrupted run, timed.
C=(--set checkpoint.every=1)
t0=$(now_ms)
$TRAINER "$JOB" "${DATA[@]}" "${C[@]}" --quiet --set checkpoint.dir="$W/ref" \
  --set output.metrics="$W/ref.jsonl" || fail "uninterrupted run"
DUR=$(($(now_ms) - t0))
[ "$(cat "$W/ref/latest")" = step_00000020 ] || fail "uninterrupted run: latest $(cat "$W/ref/latest")"
# And a run of one step: start-up, a step, a save. A run resumed at step k is killed after a delay
# drawn from 0 to its expected duration, ONE + (19 - k) * STEP ms.
t0=$(now_ms)
$TRAINER "$JOB" "${DATA[@]}" "${C[@]}" --quiet --set checkpoint.dir="$W/one" --set train.steps=1 \
  || fail "one-step run"
ONE=$(($(now_ms) - t0))
STEP=$(((DUR - ONE) / 19)); [ $STEP -ge 1 ] || STEP=1
echo "fault_test: seed $SEED; the uninterrupted run takes $DUR ms, a one-step run $ONE ms"
RANDOM=$SEED

F=$W/f
M=$W/f.jsonl
cycles=0 kills=0 terms=0 terms_early=0 terms_done=0 resumes=0 last_resume=0 cleaned=0
done= killed_at_end=
start=$SECONDS
while :; do
  final=
  [ $cycles -ge "$MAX_CYCLES" ] || [ $((SECONDS - start)) -ge "$BUDGET_S" ] && final=1
  before=$(check_latest "$F" "before run $((cycles + 1))") || exit 1
  if [ -z "$done" ] && [ "$before" = 20 ]; then
    # Killed after its last save (--resume would refuse: "already at step 20"): the training is
    # complete; only what that process left while exiting may be there.
    done=1 killed_at_end=1
    for t in $(tmps "$F"); do
      [[ $t == *.tmp.$p || $t == *.old ]] || fail "$t is left after the run (pid $p) saved step 20"
    done
  fi
  if [ -n "$done" ] && [ $((kills + terms)) -lt "$MIN_KILLS" ] && [ -z "$final" ]; then
    # Completed with too few kills to be a test: once more from scratch.
    echo "fault_test: completed after $((kills + terms)) kill(s); again from the start"
    rm -rf "$F" "$M"
    done= killed_at_end= before=0 last_resume=0
  fi
  [ -n "$done" ] && break
  cycles=$((cycles + 1))
  what="run $cycles"
  R=()
  if [ "$before" -gt 0 ]; then
    R=(--resume)
    resumes=$((resumes + 1))
    last_resume=$before
  fi
  old_tmps=$(tmps "$F")
  log=$W/log.$cycles
  # Under a subshell, which reports the exit status (and keeps bash's "Killed" lines quiet).
  rm -f "$W/pid"
  ( $TRAINER "$JOB" "${DATA[@]}" "${C[@]}" --set checkpoint.dir="$F" --set output.metrics="$M" \
      "${R[@]}" >"$log" 2>&1 &
    echo $! >"$W/pid"; wait $! ) 2>/dev/null &
  wrapper=$!
  until [ -s "$W/pid" ]; do sleep 0.01; done
  pid=$(cat "$W/pid")
  sig=
  if [ -z "$final" ]; then
    delay=$((RANDOM % (ONE + (19 - before) * STEP)))
    sig=KILL; [ $((RANDOM % 2)) = 0 ] && sig=TERM
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    kill -$sig $pid 2>/dev/null
    # A SIGTERM finishes the step and saves: wait for that, but not for ever.
    for _ in $(seq 600); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done
    if kill -0 $pid 2>/dev/null; then
      kill -9 $pid
      fail "$what: still running 30 s after SIG$sig: $(tail -5 "$log")"
    fi
    what="$what (SIG$sig after $delay ms${R:+, resumed at step $before})"
  fi
  wait $wrapper; rc=$?
  p=$pid pid=
  grep -q "cleaned up" "$log" && cleaned=$((cleaned + 1))
  # The process printed its first line (after removing older temporaries) before it was killed.
  started=; grep -q " parameters; " "$log" && started=1
  if [ -n "$started" ] && [ "$before" -gt 0 ]; then
    grep -q "resuming at step $before\$" "$log" \
      || fail "$what: did not resume at step $before: $(head -3 "$log")"
  fi
  case $rc in
  0)
    done=1 killed_at_end=
    [ "$sig" = TERM ] && terms_done=$((terms_done + 1))
    [ "$(cat "$F/latest")" = step_00000020 ] || fail "$what: completed with latest $(cat "$F/latest")"
    grep -q '"event": "end", "step": 20,' "$M" || fail "$what: no end line: $(tail -2 "$M")"
    ;;
  137)
    [ "$sig" = KILL ] || fail "$what: exit 137: $(tail -5 "$log")"
    kills=$((kills + 1))
    ;;
  143)
    [ "$sig" = TERM ] || fail "$what: exit 143: $(tail -5 "$log")"
    terms=$((terms + 1))
    ;;
  *) fail "$what: exit $rc: $(tail -5 "$log")" ;;
  esac
  after=$(check_latest "$F" "$what: after exit $rc") || exit 1
  [ "$after" -ge "$before" ] || fail "$what: latest went back from step $before to $after"
  if [ "$rc" = 143 ]; then
    if stopped=$(grep -o 'stopped by SIGTERM after step [0-9]*' "$log"); then
      # Stopped by the handler: a checkpoint of the step it finished, nothing temporary.
      n=${stopped##* }
      [ "$after" = "$n" ] || fail "$what: stopped after step $n, but latest is step $after"
      tail -1 "$M" | grep -q "\"event\": \"stopped\", \"step\": $n, \"signal\": \"SIGTERM\"" \
        || fail "$what: last metrics line: $(tail -1 "$M")"
      no_tmp "$F" "$what"
    else
      # Ended by the signal before the stop handler was installed: nothing trained, nothing saved.
      terms_early=$((terms_early + 1))
      [ "$after" = "$before" ] || fail "$what: no stop message, yet latest moved $before -> $after"
      [ -z "$started" ] \
        || fail "$what: exit 143 without a stop message after start: $(tail -3 "$log")"
    fi
  fi
  # What this process did not clean up at its start: only what it left itself (a kill while
  # saving), unless it was killed before it got to its first line.
  for t in $(tmps "$F"); do
    [[ $t == *.tmp.$p ]] && continue
    [ -z "$started" ] && echo "$old_tmps" | grep -qxF -- "$t" && continue
    [[ $t == *.old ]] && ! echo "$old_tmps" | grep -qxF -- "$t" && continue  # a kill mid-save
    fail "$what: $t is left, older than the process (pid $p) that started and ended"
  done
done
[ $((kills + terms)) -gt 0 ] || fail "no run was killed"
[ -n "$killed_at_end" ] || no_tmp "$F" "at the end"
for f in model.safetensors optimizer.safetensors; do
  cmp "$W/ref/step_00000020/$f" "$F/step_00000020/$f" || fail "$f differs from the uninterrupted run"
done
diff <(losses_after "$W/ref.jsonl" "$last_resume") <(losses_after "$M" "$last_resume") \
  || fail "losses after the last resume (step $last_resume) differ"
[ "$(losses_after "$M" "$last_resume" | grep -c '"loss"')" = $((20 - last_resume)) ] \
  || fail "expected $((20 - last_resume)) loss lines after step $last_resume"
diff <(losses "$W/ref.jsonl") <(losses "$M") >"$W/history.diff" \
  || fail "the metrics history differs from the uninterrupted run's (a kill while a resumed run" \
          "rewrote the file, launcher/reporter.cc Reporter::Open?): $(head -5 "$W/history.diff")"
echo "fault_test: $cycles runs, $((kills + terms)) killed (SIGKILL $kills, SIGTERM $terms of which" \
  "$terms_early before the stop handler), $terms_done SIGTERM too late to stop the run," \
  "$resumes resumes (the last at step $last_resume), $cleaned start-up cleanups;" \
  "step 20 byte-identical${killed_at_end:+ (killed after saving it)}, no temporaries;" \
  "$((SECONDS - start)) s"
