#!/usr/bin/env bash
# End-to-end checks of the `megalodon` tool:
#  - `megalodon logits` on the official-code fixture (tests/fixtures/megalodon-tiny) reproduces its logits (a
#    32-token row, and 40 tokens = 2.5 chunks); the file holds exactly `logits` [T,V] F32, finite, and a second
#    run writes the same bytes;
#  - bad input gives one clear message, a non-zero exit and no output file or folder;
#  - a tiny training run prints progress lines and held-out bits per byte, and a run resumed from a checkpoint
#    ends bit-identical to the uninterrupted one, also with data.carry_state (the carried state is part of the
#    checkpoint); eval (windows and --stream), seeded generate and logits work on the output folder;
#  - with sentencepiece built in and spm_train installed: a sentencepiece vocabulary trains, evaluates and
#    generates, and a vocab_size that differs from the tokenizer's is a clear error.
# Usage: test_megalodon_cli.sh path/to/megalodon path/to/blt_compare_safetensors
set -u
MGL=$1
CMP=$2
HERE=$(cd "$(dirname "$0")" && pwd)
FX="$HERE/../fixtures/megalodon-tiny"
TINY="$HERE/megalodon_tiny.json"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# expect_error <pattern> <command...>: non-zero exit and output matching pattern.
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
no_file() { for f in "$@"; do [ -e "$f" ] && fail "partial output '$f' left behind"; done; return 0; }
# header <file>: the JSON header of a safetensors file.
header() { local n; n=$(head -c 8 "$1" | od -An -tu8 | tr -d ' '); dd if="$1" bs=1 skip=8 count="$n" 2>/dev/null; }
# row_ids <file> <tensor> <row> <T>: row `row` of an integer [R, T] tensor as "a,b,c".
row_ids() { "$CMP" dump "$1" "$2" | tr ' ' '\n' | sed -n "$(($3 * $4 + 1)),$((($3 + 1) * $4))p" | paste -sd,; }
# close_to_row <file> <fixture tensor> <row> <n>: our `logits` equal row `row` (n values) of the fixture tensor.
close_to_row() {
  paste <("$CMP" dump "$1" logits | tr ' ' '\n') \
        <("$CMP" dump "$FX/cases.safetensors" "$2" | tr ' ' '\n' | sed -n "$(($3 * $4 + 1)),$((($3 + 1) * $4))p") |
    awk -v n="$4" '{ d = $1 - $2; if (d < 0) d = -d; if (!(d <= 1e-4)) bad++; if (d > m) m = d; c++ }
                   END { printf "%d values, max abs err %.3g\n", c, m; exit (bad > 0 || c != n) }'
}
finite() { "$CMP" dump "$1" logits | tr ' ' '\n' | awk '{ if ($1 !~ /^-?[0-9.]+(e[-+][0-9]+)?$/) bad++ } END { exit bad > 0 }'; }

# ---- parity with the official code's logits ----------------------------------------------------------------
ids0=$(row_ids "$FX/cases.safetensors" tokens 0 32)
"$MGL" logits -m "$FX" --ids "$ids0" --out "$TMP/l0.safetensors" > "$TMP/l0.log" 2>&1 || fail "logits failed: $(cat "$TMP/l0.log")"
grep -q 'wrote .*logits \[32, 64\] F32' "$TMP/l0.log" || fail "logits printed no summary: $(cat "$TMP/l0.log")"
hdr=$(header "$TMP/l0.safetensors")
[ "$(grep -o '"[a-z_]*":{"dtype"' <<<"$hdr")" = '"logits":{"dtype"' ] || fail "logits file holds other tensors: $hdr"
grep -q '"logits":{"dtype":"F32","shape":\[32,64\]' <<<"$hdr" && echo "ok: logits [32,64] F32" || fail "header: $hdr"
finite "$TMP/l0.safetensors" || fail "logits are not all finite"
close_to_row "$TMP/l0.safetensors" logits 0 2048 && echo "ok: logits = official logits (tokens row 0)" ||
  fail "logits differ from the fixture (tokens row 0)"
close_to_row "$TMP/l0.safetensors" logits 1 2048 > /dev/null && fail "the comparison accepts another row's logits"
"$MGL" logits -m "$FX" --ids "$ids0" --out "$TMP/l0b.safetensors" > /dev/null 2>&1 &&
  cmp -s "$TMP/l0.safetensors" "$TMP/l0b.safetensors" && echo "ok: a second run writes the same bytes" ||
  fail "two logits runs differ"
ids1=$(row_ids "$FX/cases.safetensors" stream.tokens 0 40)
"$MGL" logits -m "$FX" --ids " ${ids1//,/, }" --out "$TMP/l1.safetensors" > /dev/null 2>&1 || fail "logits (40 ids) failed"
close_to_row "$TMP/l1.safetensors" stream.logits 0 2560 && echo "ok: 40 tokens (2.5 chunks) = official stream logits" ||
  fail "logits of 40 tokens differ from the fixture"

# ---- bad input: a message, a non-zero exit, no output --------------------------------------------------------
expect_error "does not exist" "$MGL" logits -m "$TMP/nope" --ids 1 --out "$TMP/o1.safetensors"
expect_error "'x' (entry 1) is not an integer" "$MGL" logits -m "$FX" --ids 5,x,3 --out "$TMP/o2.safetensors"
expect_error "'2.5' (entry 0) is not an integer" "$MGL" logits -m "$FX" --ids 2.5 --out "$TMP/o2.safetensors"
expect_error "token id 64 (entry 2) is out of the vocabulary range \[0, 64)" "$MGL" logits -m "$FX" --ids 1,2,64 --out "$TMP/o3.safetensors"
expect_error "token id -1 (entry 0) is out of" "$MGL" logits -m "$FX" --ids=-1 --out "$TMP/o3.safetensors"
expect_error "no token ids" "$MGL" logits -m "$FX" --ids "" --out "$TMP/o4.safetensors"
expect_error "'' (entry 1) is not an integer" "$MGL" logits -m "$FX" --ids 1,,2 --out "$TMP/o4.safetensors"
expect_error "out is required" "$MGL" logits -m "$FX" --ids 1
expect_error "bogus" "$MGL" logits -m "$FX" --ids 1 --out "$TMP/o5.safetensors" --bogus
expect_error "cannot create" "$MGL" logits -m "$FX" --ids 1 --out "$TMP/no/such/dir/o6.safetensors"
mkdir -p "$TMP/trunc" "$TMP/garbage" "$TMP/nofield" "$TMP/shape" "$TMP/nocfg" "$TMP/badtype"
cp "$FX/config.json" "$TMP/trunc/"
head -c 3000 "$FX/model.safetensors" > "$TMP/trunc/model.safetensors"
expect_error "trunc/model.safetensors" "$MGL" logits -m "$TMP/trunc" --ids 1 --out "$TMP/o7.safetensors"
cp "$FX/model.safetensors" "$TMP/garbage/"; echo '{"num_layers": 2,' > "$TMP/garbage/config.json"
expect_error "garbage/config.json" "$MGL" logits -m "$TMP/garbage" --ids 1 --out "$TMP/o8.safetensors"
cp "$FX/model.safetensors" "$TMP/nofield/"; grep -v '"z_dim"' "$FX/config.json" > "$TMP/nofield/config.json"
expect_error "missing field 'z_dim'" "$MGL" logits -m "$TMP/nofield" --ids 1 --out "$TMP/o9.safetensors"
cp "$FX/model.safetensors" "$TMP/badtype/"; sed 's/"chunk_size": 16/"chunk_size": "big"/' "$FX/config.json" > "$TMP/badtype/config.json"
expect_error "field 'chunk_size' must be a positive integer" "$MGL" generate -m "$TMP/badtype" -p hi -n 2
cp "$FX/model.safetensors" "$TMP/shape/"; sed 's/"ffn_hidden_dim": 48/"ffn_hidden_dim": 40/' "$FX/config.json" > "$TMP/shape/config.json"
expect_error "expected shape" "$MGL" logits -m "$TMP/shape" --ids 1 --out "$TMP/o10.safetensors"
cp "$FX/model.safetensors" "$TMP/nocfg/"
expect_error "config.json' is missing" "$MGL" logits -m "$TMP/nocfg" --ids 1 --out "$TMP/o11.safetensors"
expect_error "no tokenizer.model" "$MGL" generate -m "$FX" -p hi -n 2  # vocab 64: not a byte model
expect_error "top_p must be in (0, 1]" "$MGL" generate -m "$FX" -p hi -n 2 --top-p 2
no_file "$TMP"/o*.safetensors "$TMP/no"

# ---- training ------------------------------------------------------------------------------------------------
for i in $(seq 1 300); do
  echo "Line $i: the quick brown fox jumps over the lazy dog; a dictionary defines words by other words."
done > "$TMP/corpus.txt"
C="$TMP/corpus.txt"
echo '{"model": ' > "$TMP/garbage.json"
sed 's/"num_layers": 2, //' "$TINY" > "$TMP/nolayers.json"
sed 's/"model_dim": 32/"model_dimm": 32/' "$TINY" > "$TMP/typo.json"
sed 's/"eval_windows": 8}/"eval_windows": 8, "carry_state": true}/' "$TINY" > "$TMP/carry.json"
sed 's/"seq_len": 32/"seq_len": 24/' "$TMP/carry.json" > "$TMP/carry24.json"
sed 's/"vocab_size": 256/"vocab_size": 100/' "$TINY" > "$TMP/smallvocab.json"
expect_error "bogus" "$MGL" train -c "$TINY" --bogus
expect_error "missing/config.json" "$MGL" train -c "$TMP/missing/config.json" -o "$TMP/t1"
expect_error "garbage.json" "$MGL" train -c "$TMP/garbage.json" -o "$TMP/t2"
expect_error "missing field 'num_layers'" "$MGL" train -c "$TMP/nolayers.json" --data "$C" -o "$TMP/t3"
expect_error "unknown field 'model_dimm'" "$MGL" train -c "$TMP/typo.json" --data "$C" -o "$TMP/t4"
expect_error "$TMP/nope.txt" "$MGL" train -c "$TINY" --data "$TMP/nope.txt" -o "$TMP/t5"
expect_error "multiple of model.chunk_size" "$MGL" train -c "$TMP/carry24.json" --data "$C" -o "$TMP/t6"
expect_error "too small for the byte vocabulary" "$MGL" train -c "$TMP/smallvocab.json" --data "$C" -o "$TMP/t7"
no_file "$TMP"/t?

# Run A (checkpoints at steps 3 and 6), then run B: A's step-3 checkpoint in a fresh folder, resumed to step 6.
# resume_check <config> <name>
resume_check() {
  local cfg=$1 a="$TMP/$2a" b="$TMP/$2b"
  "$MGL" train -c "$cfg" --data "$C" -o "$a" > "$a.log" 2>&1 || fail "run $2a failed: $(cat "$a.log")"
  [ -f "$a/step_00000006/model.safetensors" ] || fail "run $2a wrote no step-6 checkpoint"
  mkdir -p "$b"
  cp -r "$a/step_00000003" "$b/"
  cp "$a/config.json" "$b/"
  echo step_00000003 > "$b/latest"
  "$MGL" train -c "$cfg" --data "$C" -o "$b" --resume > "$b.log" 2>&1 || fail "run $2b failed: $(cat "$b.log")"
  grep -q "resumed from" "$b.log" || fail "run $2b did not resume"
  if cmp -s "$a/step_00000006/model.safetensors" "$b/step_00000006/model.safetensors" &&
     cmp -s "$a/step_00000006/optimizer.safetensors" "$b/step_00000006/optimizer.safetensors" &&
     cmp -s "$a/model.safetensors" "$b/model.safetensors"; then
    echo "ok: resumed run $2b is bit-identical to the uninterrupted run $2a"
  else
    fail "resumed weights ($2b) differ from the uninterrupted run ($2a)"
  fi
}
resume_check "$TINY" ""
A="$TMP/a"
grep -q "held-out bpb at start: [0-9]" "$A.log" || fail "run A printed no held-out bpb at start"
grep -q "held-out bpb at end: [0-9]" "$A.log" || fail "run A printed no held-out bpb at end"
grep -q "^step 1/6 | loss [0-9.]* | lr .* | grad norm [0-9.]* | [0-9]* tok/s | [0-9.]* ms" "$A.log" ||
  fail "run A printed no progress lines: $(cat "$A.log")"
grep -q "^eval step 3 | val_bpb [0-9]" "$A.log" || fail "run A printed no held-out bpb at step 3"
[ "$(grep -c '"step"' "$A/metrics.jsonl")" = 6 ] || fail "metrics.jsonl does not have 6 records"
for k in num_layers model_dim z_dim value_dim num_heads ffn_hidden_dim cema_ndim chunk_size norm_num_groups vocab_size swiglu; do
  grep -q "\"$k\"" "$A/config.json" || fail "config.json lacks the official field $k"
done
expect_error "already holds checkpoints" "$MGL" train -c "$TINY" --data "$C" -o "$A"
resume_check "$TMP/carry.json" "carry"
grep -q "state carried across windows" "$TMP/carrya.log" || fail "carry_state run did not say so"
grep -q '"carried_state"' "$TMP/carrya/step_00000003/trainer_state.json" || fail "no carried state in the checkpoint"

# Eval, generate and logits on the output folder (and on a folder with only checkpoints).
"$MGL" eval -m "$A" --data "$C" --seq-len 32 --max-windows 8 > "$TMP/ev.log" 2>&1 && grep -q "^bpb: [0-9]" "$TMP/ev.log" ||
  fail "eval printed no bpb: $(cat "$TMP/ev.log")"
"$MGL" eval -m "$A" --data "$C" --stream --max-bytes 2000 > "$TMP/evs.log" 2>&1 &&
  grep -q "^bpb: [0-9]" "$TMP/evs.log" && grep -q "1999 tokens predicted in one stream" "$TMP/evs.log" ||
  fail "eval --stream: $(cat "$TMP/evs.log")"
# One window of 1000 tokens (62.5 chunks) with no state = the same text streamed in pieces with carried state.
w=$("$MGL" eval -m "$A" --data "$C" --seq-len 1000 --max-bytes 1001 | head -n 1)
s=$("$MGL" eval -m "$A" --data "$C" --stream --max-bytes 1001 | head -n 1)
awk -v w="${w#bpb: }" -v s="${s#bpb: }" 'BEGIN { d = w - s; exit !(w > 0 && d < 2e-4 && d > -2e-4) }' &&
  echo "ok: streamed eval = one-window eval ($s)" || fail "streamed '$s' != windowed '$w'"
expect_error "$TMP/nope.txt" "$MGL" eval -m "$A" --data "$TMP/nope.txt"
"$MGL" generate -m "$A" -p "Line " -n 24 --seed 3 --top-k 20 --top-p 0.9 > "$TMP/g1" 2> "$TMP/g1.err" &&
  "$MGL" generate -m "$A" -p "Line " -n 24 --seed 3 --top-k 20 --top-p 0.9 > "$TMP/g2" 2> /dev/null &&
  cmp -s "$TMP/g1" "$TMP/g2" || fail "seeded generation is not reproducible"
[ "$(head -c 5 "$TMP/g1")" = "Line " ] && [ "$(wc -c < "$TMP/g1")" = 30 ] || fail "generate output is not prompt + 24 bytes"
grep -q "generation: 24 tokens, 24 bytes in .* bytes/s" "$TMP/g1.err" || fail "generate printed no speed: $(cat "$TMP/g1.err")"
"$MGL" generate -m "$A" -p "Line " -n 24 --seed 4 --top-k 20 > "$TMP/g3" 2> /dev/null
cmp -s "$TMP/g1" "$TMP/g3" && fail "another seed gave the same sample"
"$MGL" logits -m "$A" --ids 76,105,110,101,32,49 --out "$TMP/trained.safetensors" > /dev/null 2>&1 &&
  grep -q '"logits":{"dtype":"F32","shape":\[6,256\]' <<<"$(header "$TMP/trained.safetensors")" ||
  fail "logits of the trained model"
rm "$TMP/b/model.safetensors"  # a run still going: the latest checkpoint is used
"$MGL" logits -m "$TMP/b" --ids 76,105,110,101,32,49 --out "$TMP/ckpt.safetensors" > /dev/null 2>&1 &&
  "$CMP" compare "$TMP/ckpt.safetensors" logits "$TMP/trained.safetensors" logits --atol 0 > /dev/null &&
  echo "ok: -m uses the latest checkpoint of a training folder" || fail "logits from the checkpoint folder"
expect_error "token id 256 (entry 0)" "$MGL" logits -m "$A" --ids 256 --out "$TMP/o12.safetensors"
head -c 100 "$A/model.safetensors" > "$TMP/trunc.safetensors" && mv "$TMP/trunc.safetensors" "$A/model.safetensors"
expect_error "model.safetensors" "$MGL" eval -m "$A" --data "$C"
no_file "$TMP"/o*.safetensors

# ---- sentencepiece (optional) --------------------------------------------------------------------------------
echo '{"model": {"num_layers": 1, "model_dim": 32, "z_dim": 16, "value_dim": 32, "num_heads": 1, "ffn_hidden_dim": 48,
 "cema_ndim": 4, "chunk_size": 16, "norm_num_groups": 4},
 "data": {"heldout_fraction": 0.1, "batch": 2, "seq_len": 16, "eval_windows": 4, "tokenizer": {"sentencepiece": "'"$TMP/spm.model"'"}},
 "train": {"steps": 2, "warmup": 1, "lr": 3e-3, "seed": 1}}' > "$TMP/spm.json"
out=$("$MGL" train -c "$TMP/spm.json" --data "$C" -o "$TMP/sp0" 2>&1)
if grep -q "built without sentencepiece" <<<"$out"; then
  echo "skipped: this megalodon was built without sentencepiece"
  no_file "$TMP/sp0"
elif ! command -v spm_train > /dev/null; then
  grep -q "spm.model' does not exist" <<<"$out" || fail "missing sentencepiece model: $out"
  echo "skipped: spm_train (Debian package sentencepiece) is not installed"
else
  spm_train --input="$C" --model_prefix="$TMP/spm" --vocab_size=100 --model_type=bpe --minloglevel=2 > /dev/null 2>&1 ||
    fail "spm_train failed"
  "$MGL" train -c "$TMP/spm.json" --data "$C" -o "$TMP/sp" > "$TMP/sp.log" 2>&1 || fail "sentencepiece run failed: $(cat "$TMP/sp.log")"
  grep -q "tokenizer: sentencepiece .*(100 pieces)" "$TMP/sp.log" || fail "sentencepiece run did not name its tokenizer"
  [ -f "$TMP/sp/tokenizer.model" ] && grep -q '"vocab_size": 100' "$TMP/sp/config.json" ||
    fail "sentencepiece run saved no tokenizer.model / vocab_size 100"
  "$MGL" eval -m "$TMP/sp" --data "$C" --seq-len 16 --max-windows 4 | grep -q "^bits per token: [0-9]" ||
    fail "sentencepiece eval printed no bits per token"
  "$MGL" generate -m "$TMP/sp" -p "Line 3" -n 5 --seed 1 2> /dev/null | grep -q "^Line 3" || fail "sentencepiece generate"
  sed 's/"norm_num_groups": 4}/"norm_num_groups": 4, "vocab_size": 256}/' "$TMP/spm.json" > "$TMP/spm256.json"
  expect_error "vocab_size 256 differs from the 100 pieces" "$MGL" train -c "$TMP/spm256.json" --data "$C" -o "$TMP/sp2"
  no_file "$TMP/sp2"
fi

[ $fails -eq 0 ] && echo "all checks passed" || { echo "$fails check(s) failed"; exit 1; }
