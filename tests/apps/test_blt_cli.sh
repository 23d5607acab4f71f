#!/usr/bin/env bash
# End-to-end checks of the `blt` tool:
#  - `blt logits` and greedy `blt generate` on the transformers fixture (tests/fixtures/blt-hf-tiny) reproduce
#    its case0 logits, entropies, patch lengths and 24-byte greedy continuation;
#  - bad input gives one clear message, a non-zero exit and no output file;
#  - `blt patch --png` writes a PNG;
#  - a tiny train-entropy + train run works, and a run resumed from a checkpoint ends bit-identical to the
#    uninterrupted one; eval prints bits per byte; the trained model generates reproducibly.
# Usage: test_blt_cli.sh path/to/blt path/to/blt_compare_safetensors
set -u
BLT=$1
CMP=$2
HERE=$(cd "$(dirname "$0")" && pwd)
FX="$HERE/../fixtures/blt-hf-tiny"
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
  if ! grep -q -- "$pat" <<<"$out"; then fail "message for '$*' lacks '$pat': $out"; return; fi
  echo "ok (exit $rc): $pat"
}
no_file() { for f in "$@"; do [ -e "$f" ] && fail "partial output '$f' left behind"; done; return 0; }

# case0 of the fixture: "The quick brown fox jumps over the lazy dog. Patches scale better than tokens!"
CASE0=54686520717569636b2062726f776e20666f78206a756d7073206f76657220746865206c617a7920646f672e2050617463686573207363616c6520626574746572207468616e20746f6b656e7321

# ---- parity with the transformers fixture ----------------------------------------------------------------
"$BLT" logits -m "$FX" --ids-hex "$CASE0" --out "$TMP/case0.safetensors" > "$TMP/logits.log" 2>&1 ||
  fail "blt logits failed: $(cat "$TMP/logits.log")"
"$CMP" compare "$TMP/case0.safetensors" logits "$FX/cases.safetensors" case0.logits --atol 1e-4 || fail "logits differ"
"$CMP" compare "$TMP/case0.safetensors" entropies "$FX/cases.safetensors" case0.entropies --atol 1e-4 ||
  fail "entropies differ"
"$CMP" compare "$TMP/case0.safetensors" patch_lengths "$FX/cases.safetensors" case0.patch_lengths ||
  fail "patch lengths differ"
# The checker itself must notice a difference.
"$CMP" compare "$TMP/case0.safetensors" logits "$FX/cases.safetensors" case1.logits > /dev/null 2>&1 &&
  fail "the comparison accepts different tensors"

"$BLT" generate -m "$FX" --temp 0 -n 24 --prompt-hex "$CASE0" --ids-out "$TMP/greedy.txt" > "$TMP/gen.log" 2>&1 ||
  fail "blt generate failed: $(cat "$TMP/gen.log")"
expected=$("$CMP" dump "$FX/cases.safetensors" case0.greedy)
got=$(tr -s ' \n' ' ' < "$TMP/greedy.txt" | sed 's/ $//')
[ "$got" = "$expected" ] && echo "ok: greedy continuation = case0.greedy" || fail "greedy ids '$got' != '$expected'"
grep -q "^The quick brown fox" "$TMP/gen.log" || fail "generate did not print the text"
grep -q "prefill: .*bytes/s.*generation: .*bytes/s" "$TMP/gen.log" || fail "generate printed no speeds"

# ---- bad input: a message, a non-zero exit, no output ------------------------------------------------------
expect_error "does not exist" "$BLT" logits -m "$TMP/nope" --ids-hex 41 --out "$TMP/o1.safetensors"
expect_error "not a hex digit" "$BLT" logits -m "$FX" --ids-hex 4g --out "$TMP/o2.safetensors"
expect_error "odd number of hex digits" "$BLT" generate -m "$FX" --prompt-hex 414 -n 2 --ids-out "$TMP/o3.txt"
expect_error "out is required" "$BLT" logits -m "$FX" --ids-hex 41
expect_error "exactly one of" "$BLT" generate -m "$FX" -n 2 --ids-out "$TMP/o4.txt"
expect_error "top-p" "$BLT" generate -m "$FX" -p hi -n 2 --top-p 2 --ids-out "$TMP/o5.txt"
expect_error "bogus" "$BLT" eval -m "$FX" --data x --bogus
mkdir -p "$TMP/trunc" "$TMP/badcfg"
cp "$FX/config.json" "$TMP/trunc/"
head -c 5000 "$FX/model.safetensors" > "$TMP/trunc/model.safetensors"
expect_error "model.safetensors" "$BLT" logits -m "$TMP/trunc" --ids-hex 41 --out "$TMP/o6.safetensors"
cp "$FX/model.safetensors" "$TMP/badcfg/"
sed 's/"patching_threshold": [0-9.]*/"patching_threshold": "high"/' "$FX/config.json" > "$TMP/badcfg/config.json"
expect_error "patching_threshold" "$BLT" logits -m "$TMP/badcfg" --ids-hex 41 --out "$TMP/o7.safetensors"
expect_error "patching_threshold" "$BLT" generate -m "$TMP/badcfg" -p hi -n 2 --ids-out "$TMP/o8.txt"
expect_error "cannot create" "$BLT" logits -m "$FX" --ids-hex 41 --out "$TMP/no/such/dir/o9.safetensors"
no_file "$TMP"/o*.safetensors "$TMP"/o*.txt "$TMP/no"

# ---- patch plot ---------------------------------------------------------------------------------------------
"$BLT" patch -m "$FX" --text "The quick brown fox jumps over the lazy dog." --png "$TMP/patches.png" > "$TMP/patch.log" 2>&1 ||
  fail "blt patch failed: $(cat "$TMP/patch.log")"
[ "$(head -c 8 "$TMP/patches.png" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] &&
  echo "ok: patch --png wrote a PNG" || fail "patches.png is not a PNG"
grep -q "^patch .*H:" "$TMP/patch.log" || fail "blt patch printed no patches with entropies"

# ---- tiny training runs -------------------------------------------------------------------------------------
for i in $(seq 1 300); do
  echo "Line $i: the quick brown fox jumps over the lazy dog; a dictionary defines words by other words."
done > "$TMP/corpus.txt"
cat > "$TMP/entropy.json" <<'EOF'
{"model": {"dim": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64},
 "data": {"heldout_fraction": 0.1, "batch": 4, "seq_len": 32, "eval_windows": 4},
 "train": {"steps": 6, "warmup": 2, "lr": 3e-3, "min_lr": 3e-4, "eval_every": 3, "ckpt_every": 3, "seed": 7}}
EOF
cat > "$TMP/blt.json" <<EOF
{"entropy_model": "$TMP/ent",
 "model": {"encoder": {"dim": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64},
           "global": {"dim": 64, "n_layers": 1, "n_heads": 2, "ffn_hidden": 128},
           "decoder": {"dim": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64},
           "cross_attn_k": 2, "hash_vocab": 257},
 "patching": {"target_patch_length": 4.0, "calibration_windows": 8},
 "data": {"heldout_fraction": 0.1, "batch": 4, "seq_len": 32, "eval_windows": 4},
 "train": {"steps": 6, "warmup": 2, "lr": 3e-3, "min_lr": 3e-4, "eval_every": 3, "ckpt_every": 3, "seed": 7}}
EOF
sed 's/"n_heads": 2, "ffn_hidden": 64}/"n_heads": 2, "ffn_hiden": 64}/' "$TMP/blt.json" > "$TMP/typo.json"
sed 's/"dim": 32, "n_layers": 1/"dim": "wide", "n_layers": 1/' "$TMP/entropy.json" > "$TMP/badent.json"
expect_error "bogus" "$BLT" train -c "$TMP/blt.json" --bogus
expect_error "missing/blt.json" "$BLT" train -c "$TMP/missing/blt.json" -o "$TMP/t1"
expect_error "$TMP/nope.txt" "$BLT" train-entropy -c "$TMP/entropy.json" --data "$TMP/nope.txt" -o "$TMP/t2"
expect_error "field 'dim'" "$BLT" train-entropy -c "$TMP/badent.json" --data "$TMP/corpus.txt" -o "$TMP/t3"
expect_error "unknown field 'ffn_hiden'" "$BLT" train -c "$TMP/typo.json" --data "$TMP/corpus.txt" -o "$TMP/t4"
expect_error "entropy_model" "$BLT" train -c "$TMP/blt.json" --data "$TMP/corpus.txt" -o "$TMP/t5"  # not trained yet
no_file "$TMP"/t?

"$BLT" train-entropy -c "$TMP/entropy.json" --data "$TMP/corpus.txt" -o "$TMP/ent" > "$TMP/ent.log" 2>&1 ||
  fail "train-entropy failed: $(cat "$TMP/ent.log")"
[ -f "$TMP/ent/model.safetensors" ] && [ -f "$TMP/ent/config.json" ] || fail "train-entropy saved no model"
grep -q "bpb .* bytes_per_s" "$TMP/ent.log" || fail "train-entropy printed no progress lines"
expect_error "not an entropy model" "$BLT" train -c <(sed "s#$TMP/ent#$FX#" "$TMP/blt.json") --data "$TMP/corpus.txt" -o "$TMP/t6"
no_file "$TMP/t6"

# Run A (checkpoints at steps 3 and 6), then run B: A's step-3 checkpoint in a fresh folder, resumed to step 6.
"$BLT" train -c "$TMP/blt.json" --data "$TMP/corpus.txt" -o "$TMP/a" > "$TMP/a.log" 2>&1 || fail "run A failed: $(cat "$TMP/a.log")"
[ -f "$TMP/a/step_00000006/model.safetensors" ] || fail "run A wrote no step-6 checkpoint"
grep -q "held-out bpb at end" "$TMP/a.log" || fail "run A printed no held-out bpb"
grep -q "mean_patch_len .* patches_per_s" "$TMP/a.log" || fail "run A printed no patch statistics"
[ "$(grep -c '"step"' "$TMP/a/metrics.jsonl")" = 6 ] || fail "metrics.jsonl does not have 6 records"
mkdir -p "$TMP/b"
cp -r "$TMP/a/step_00000003" "$TMP/b/"
cp "$TMP/a/config.json" "$TMP/b/"
echo step_00000003 > "$TMP/b/latest"
"$BLT" train -c "$TMP/blt.json" --data "$TMP/corpus.txt" -o "$TMP/b" --resume > "$TMP/b.log" 2>&1 || fail "run B failed: $(cat "$TMP/b.log")"
grep -q "resumed from" "$TMP/b.log" || fail "run B did not resume"
if cmp -s "$TMP/a/step_00000006/model.safetensors" "$TMP/b/step_00000006/model.safetensors" &&
   cmp -s "$TMP/a/step_00000006/optimizer.safetensors" "$TMP/b/step_00000006/optimizer.safetensors" &&
   cmp -s "$TMP/a/model.safetensors" "$TMP/b/model.safetensors"; then
  echo "ok: resumed run is bit-identical to the uninterrupted run"
else
  fail "resumed weights differ from the uninterrupted run"
fi
expect_error "already holds checkpoints" "$BLT" train -c "$TMP/blt.json" --data "$TMP/corpus.txt" -o "$TMP/a"
# The entropy model inside the BLT is frozen: the saved model.patcher.* equal the entropy model's weights.
"$CMP" compare "$TMP/a/model.safetensors" model.patcher.lm_head.weight "$TMP/ent/model.safetensors" lm_head.weight \
  --atol 0 > /dev/null || fail "training changed the entropy model"

# Eval, generate and inspect the trained model.
"$BLT" eval -m "$TMP/a" --data "$TMP/corpus.txt" --seq-len 64 --max-windows 4 | grep -q "^bpb: [0-9]" || fail "eval printed no bpb"
"$BLT" eval -m "$TMP/ent" --data "$TMP/corpus.txt" --seq-len 64 --max-windows 4 | grep -q "^bpb: [0-9]" ||
  fail "eval of the entropy model printed no bpb"
"$BLT" generate -m "$TMP/a" -p "Line " -n 12 --seed 3 --top-k 20 --top-p 0.9 --ids-out "$TMP/s1" > /dev/null &&
  "$BLT" generate -m "$TMP/a" -p "Line " -n 12 --seed 3 --top-k 20 --top-p 0.9 --ids-out "$TMP/s2" > /dev/null &&
  cmp -s "$TMP/s1" "$TMP/s2" || fail "seeded sampling is not reproducible"
"$BLT" logits -m "$TMP/a" --ids-hex 4c696e652031 --out "$TMP/trained.safetensors" > /dev/null || fail "logits of the trained model failed"

[ $fails -eq 0 ] && echo "all checks passed" || { echo "$fails check(s) failed"; exit 1; }
