#!/usr/bin/env bash
# End-to-end checks of tessera-lm: bad input gives one clear message, a non-zero exit and no partial
# output; training stopped at a checkpoint and resumed ends bit-identical to an uninterrupted run.
set -u
LM=$1
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# expect_error <pattern> <command...>: non-zero exit and stderr/stdout matching pattern.
expect_error() {
  local pat=$1; shift
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then fail "expected failure: $*"; return; fi
  # Bad input must end in an error exit, never a crash (a signal: exit status 128 + N).
  if [ $rc -gt 128 ]; then fail "crashed (signal $((rc - 128))) instead of an error exit: $*: $out"; return; fi
  if ! grep -q -- "$pat" <<<"$out"; then fail "message for '$*' lacks '$pat': $out"; return; fi
  echo "ok (exit $rc): $pat"
}

# A small corpus of real-looking English text.
for i in $(seq 1 300); do
  echo "Line $i: the quick brown fox jumps over the lazy dog; a dictionary defines words by other words."
done > "$TMP/corpus.txt"

expect_error "bogus" "$LM" train -c "$HERE/tiny.json" --bogus
expect_error "config.json" "$LM" train -c "$TMP/missing/config.json" -o "$TMP/o1"
echo '{"model": {"vocab_size": 256}, "data": {"path": "x"}, "train": {}}' > "$TMP/bad.json"
expect_error "missing field 'dim'" "$LM" train -c "$TMP/bad.json" -o "$TMP/o2"
echo '{"model": ' > "$TMP/garbage.json"
expect_error "garbage.json" "$LM" train -c "$TMP/garbage.json" -o "$TMP/o3"
expect_error "$TMP/nope.txt" "$LM" train -c "$HERE/tiny.json" --data "$TMP/nope.txt" -o "$TMP/o4"
for d in o1 o2 o3 o4; do [ -e "$TMP/$d" ] && fail "partial output folder $d left behind"; done

# Uninterrupted run A (checkpoints at steps 3 and 6).
"$LM" train -c "$HERE/tiny.json" --data "$TMP/corpus.txt" -o "$TMP/a" > "$TMP/a.log" 2>&1 || fail "run A failed: $(cat "$TMP/a.log")"
[ -f "$TMP/a/step_00000006/model.safetensors" ] || fail "run A wrote no step-6 checkpoint"
grep -q "held-out bpb at end" "$TMP/a.log" || fail "run A printed no held-out bpb"

# Run B: start from A's step-3 checkpoint in a fresh folder, resume to step 6.
mkdir -p "$TMP/b"
cp -r "$TMP/a/step_00000003" "$TMP/b/"
cp "$TMP/a/config.json" "$TMP/b/"
echo step_00000003 > "$TMP/b/latest"
"$LM" train -c "$HERE/tiny.json" --data "$TMP/corpus.txt" -o "$TMP/b" --resume > "$TMP/b.log" 2>&1 || fail "run B failed: $(cat "$TMP/b.log")"
grep -q "resumed from" "$TMP/b.log" || fail "run B did not resume"
if cmp -s "$TMP/a/step_00000006/model.safetensors" "$TMP/b/step_00000006/model.safetensors" &&
   cmp -s "$TMP/a/step_00000006/optimizer.safetensors" "$TMP/b/step_00000006/optimizer.safetensors"; then
  echo "ok: resumed run is bit-identical to the uninterrupted run"
else
  fail "resumed weights differ from the uninterrupted run"
fi

# Eval and sample from the trained model; a truncated checkpoint is a clear error.
"$LM" eval -m "$TMP/a" --data "$TMP/corpus.txt" --seq-len 32 | grep -q "bpb:" || fail "eval printed no bpb"
"$LM" sample -m "$TMP/a" -p "The " -n 16 --seed 3 > "$TMP/s1" && "$LM" sample -m "$TMP/a" -p "The " -n 16 --seed 3 > "$TMP/s2" \
  && cmp -s "$TMP/s1" "$TMP/s2" || fail "seeded sampling is not reproducible"
head -c 100 "$TMP/a/step_00000006/model.safetensors" > "$TMP/trunc.safetensors"
mv "$TMP/trunc.safetensors" "$TMP/a/step_00000006/model.safetensors"
expect_error "model.safetensors" "$LM" eval -m "$TMP/a" --data "$TMP/corpus.txt"

[ $fails -eq 0 ] && echo "all checks passed" || { echo "$fails check(s) failed"; exit 1; }
