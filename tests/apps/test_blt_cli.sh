#!/usr/bin/env bash
# End-to-end checks of the `blt` tool:
#  - `blt logits` and greedy `blt generate` on the transformers fixture (tests/fixtures/blt-hf-tiny) reproduce
#    its case0 logits, entropies, patch lengths and 24-byte greedy continuation;
#  - bad input gives one clear message, a non-zero exit and no output file;
#  - `blt patch --png` writes a PNG;
#  - a tiny train-entropy + train run works, and a run resumed from a checkpoint ends bit-identical to the
#    uninterrupted one; eval prints bits per byte; the trained model generates reproducibly;
#  - devices: --device cuda without a usable GPU (none visible, or blt built without CUDA) and --precision bf16
#    on the CPU are refused with a message, a non-zero exit and no output. With a GPU (nvidia-smi lists one and
#    blt has the CUDA backend): train-entropy and train on cuda match the CPU runs step by step, eval of one
#    checkpoint gives the same loss on cpu and cuda, --resume continues across devices (both ways) with the
#    uninterrupted run's losses and weights, greedy generate on cuda gives the CPU's bytes, and bf16 runs.
#    Tolerance across devices: 1e-4 relative (fp32 with different summation orders).
# Usage: test_blt_cli.sh path/to/blt path/to/blt_compare_safetensors
# TESSERA_BLT_CLI_REQUIRE_GPU=1 (scripts/gpu-check): a missing GPU or a blt without CUDA is a failure instead
# of skipping the GPU checks.
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
  # Bad input must end in an error exit, never a crash (a signal: exit status 128 + N).
  if [ $rc -gt 128 ]; then fail "crashed (signal $((rc - 128))) instead of an error exit: $*: $out"; return; fi
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

# ---- devices -----------------------------------------------------------------------------------------------
# losses <metrics.jsonl>: "step loss" per line (keys are sorted in the records: ..."loss":X,..."step":N...).
losses() { sed -n 's/.*"loss":\([^,}]*\).*"step":\([0-9]*\).*/\2 \1/p' "$1"; }
# close_losses A.jsonl B.jsonl FIRST LAST what: the losses of steps FIRST..LAST agree within 1e-4 relative.
close_losses() {
  local res
  res=$(join <(losses "$1" | sort -k1,1) <(losses "$2" | sort -k1,1) | awk -v f="$3" -v l="$4" '
    function num(x) { return x ~ /^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$/ }
    $1 >= f && $1 <= l { n++; d = $2 - $3; d = d < 0 ? -d : d; a = $2 < 0 ? -$2 : $2; r = a > 0 ? d / a : d
                         if (r > w) w = r; if (!num($2) || !num($3) || r > 1e-4) bad = bad " step " $1 ": " $2 " vs " $3 }
    END { if (n != l - f + 1) print "FAIL compared " n + 0 " steps"; else if (bad != "") print "FAIL" bad
          else printf "max rel diff %.2g\n", w }')
  [[ $res == FAIL* ]] && fail "$5: losses differ: $res" || echo "ok: $5: losses of steps $3..$4 agree ($res)"
}
# close_num A B tol what: |A - B| <= tol * |A|.
close_num() {
  awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { re = "^-?[0-9]+(\\.[0-9]*)?([eE][-+]?[0-9]+)?$"
    d = a - b; d = d < 0 ? -d : d; m = a < 0 ? -a : a; exit !(a ~ re && b ~ re && d <= t * m) }' &&
    echo "ok: $4: $1 vs $2" || fail "$4: $1 vs $2 (tolerance $3 relative)"
}
# eval_loss <log>: the "loss X nats/byte" of `blt eval`.
eval_loss() { sed -n 's/.* loss \([0-9.eE+-]*\) nats\/byte.*/\1/p' "$1"; }
# same_weights A B what: a few tensors of two BLT model files agree (weights ~0.02; 2e-4 abs: AdamW's normalised
# update turns the backends' rounding differences in gradients near eps into weight differences of ~1e-5, see
# tests/cuda/test_cuda_blt_app.cpp; a real divergence moves weights by ~lr = 3e-3 per step).
same_weights() {
  local k ok=1
  for k in lm_head.weight model.global_transformer.layers.0.self_attn.q_proj.weight \
      model.local_encoder.layers.0.mlp.down_proj.weight model.local_decoder.cross_attn_layers.0.k_proj.weight \
      model.local_decoder.norm.weight model.encoder_hash_tok_embedding.weight model.local_encoder.embed_tokens.weight; do
    "$CMP" compare "$1" "$k" "$2" "$k" --atol 2e-4 > "$TMP/cmp.log" 2>&1 || { ok=0; fail "$3: $k: $(cat "$TMP/cmp.log")"; }
  done
  ((ok)) && echo "ok: $3: weights agree"
}
# resume_from SRC STEP DST: DST holds SRC's checkpoint STEP only (then `--resume` continues from it).
resume_from() {
  mkdir -p "$3" && cp -r "$1/step_0000000$2" "$3/" && cp "$1/config.json" "$3/" && echo "step_0000000$2" > "$3/latest"
}

# Refused everywhere: bf16 training on the CPU, an unknown device.
expect_error "needs --device cuda for training" "$BLT" train -c "$TMP/blt.json" --data "$TMP/corpus.txt" -o "$TMP/d1" --precision bf16
expect_error "needs --device cuda for training" "$BLT" train-entropy -c "$TMP/entropy.json" --data "$TMP/corpus.txt" -o "$TMP/d1" --precision bf16
# bf16 inference on the CPU (bf16 weights, fp32 activations): eval within 2e-2 of the fp32 loss, greedy
# generation writes its bytes.
"$BLT" eval -m "$TMP/a" --data "$TMP/corpus.txt" --seq-len 64 --max-windows 4 > "$TMP/ev_c32.log" 2>&1 &&
  "$BLT" eval -m "$TMP/a" --data "$TMP/corpus.txt" --seq-len 64 --max-windows 4 --precision bf16 > "$TMP/ev_c16.log" 2>&1 ||
  fail "eval --precision bf16 on the cpu failed: $(cat "$TMP/ev_c16.log")"
close_num "$(eval_loss "$TMP/ev_c32.log")" "$(eval_loss "$TMP/ev_c16.log")" 2e-2 "cpu eval bf16 vs fp32 (BLT)"
"$BLT" generate -m "$TMP/a" -p "Line " -n 16 --temp 0 --ignore-eos --precision bf16 --ids-out "$TMP/gen_c16.txt" \
  > "$TMP/gen_c16.log" 2>&1 || fail "generate --precision bf16 on the cpu failed: $(cat "$TMP/gen_c16.log")"
[ "$(wc -w < "$TMP/gen_c16.txt")" = 16 ] || fail "cpu generate --precision bf16 wrote $(wc -w < "$TMP/gen_c16.txt") ids, not 16"
expect_error "not in {cpu,cuda}" "$BLT" generate -m "$TMP/a" -p "Line " -n 2 --device tpu --ids-out "$TMP/d2.txt"
no_file "$TMP/d1" "$TMP/d2.txt"

gpu=0
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then gpu=1; fi
if ((gpu)) && "$BLT" eval -m "$TMP/ent" --data "$TMP/corpus.txt" --seq-len 16 --max-windows 1 --device cuda 2>&1 |
    grep -q "built without the CUDA backend"; then
  echo "note: nvidia-smi lists a GPU, but this blt was built without the CUDA backend"
  gpu=0
fi
if ((!gpu)); then
  [ "${TESSERA_BLT_CLI_REQUIRE_GPU:-0}" = 1 ] && fail "TESSERA_BLT_CLI_REQUIRE_GPU=1, but there is no GPU (or blt lacks CUDA)"
  # No usable GPU: every --device cuda command is refused before it reads or writes anything.
  nogpu="no CUDA device\|built without the CUDA backend"
  expect_error "$nogpu" "$BLT" train-entropy -c "$TMP/entropy.json" --data "$TMP/corpus.txt" -o "$TMP/g1" --device cuda
  expect_error "$nogpu" "$BLT" train -c "$TMP/blt.json" --data "$TMP/corpus.txt" -o "$TMP/g2" --device cuda
  expect_error "$nogpu" "$BLT" train -c "$TMP/blt.json" --data "$TMP/corpus.txt" -o "$TMP/g3" --device cuda --precision bf16
  mkdir -p "$TMP/g4"  # an existing, empty output folder stays empty
  expect_error "$nogpu" "$BLT" train -c "$TMP/blt.json" --data "$TMP/corpus.txt" -o "$TMP/g4" --device cuda
  [ -z "$(ls -A "$TMP/g4")" ] || fail "a refused --device cuda run wrote into its output folder: $(ls -A "$TMP/g4")"
  expect_error "$nogpu" "$BLT" eval -m "$TMP/a" --data "$TMP/corpus.txt" --device cuda
  expect_error "$nogpu" "$BLT" generate -m "$TMP/a" -p "Line " -n 4 --device cuda --ids-out "$TMP/g5.txt"
  no_file "$TMP/g1" "$TMP/g2" "$TMP/g3" "$TMP/g5.txt"
  echo "skipped the GPU checks (no usable CUDA device)"
else
  echo "GPU: $(nvidia-smi -L | head -1)"
  # The entropy model on the GPU: the CPU run's 6 steps, step by step.
  "$BLT" train-entropy -c "$TMP/entropy.json" --data "$TMP/corpus.txt" -o "$TMP/gent" --device cuda > "$TMP/gent.log" 2>&1 ||
    fail "train-entropy --device cuda failed: $(cat "$TMP/gent.log")"
  grep -q "^device: cuda (fp32 compute)" "$TMP/gent.log" || fail "train-entropy --device cuda did not say it runs on cuda"
  close_losses "$TMP/ent/metrics.jsonl" "$TMP/gent/metrics.jsonl" 1 6 "train-entropy cuda vs cpu"
  # The BLT on the GPU with run A's calibrated threshold (so both devices patch alike), against a CPU run of
  # the same config; checkpoints at steps 3 and 6.
  theta=$(sed -n 's/^ *"patching_threshold": \([^,]*\),*$/\1/p' "$TMP/a/config.json")
  [ -n "$theta" ] || fail "no patching_threshold in run A's config.json"
  sed "s/\"patching\": {[^}]*}/\"patching\": {\"threshold\": $theta}/" "$TMP/blt.json" > "$TMP/fixed.json"
  "$BLT" train -c "$TMP/fixed.json" --data "$TMP/corpus.txt" -o "$TMP/c" > "$TMP/c.log" 2>&1 || fail "run C (cpu) failed: $(cat "$TMP/c.log")"
  "$BLT" train -c "$TMP/fixed.json" --data "$TMP/corpus.txt" -o "$TMP/g" --device cuda > "$TMP/g.log" 2>&1 ||
    fail "run G (cuda) failed: $(cat "$TMP/g.log")"
  [ -f "$TMP/g/step_00000003/optimizer.safetensors" ] && [ -f "$TMP/g/model.safetensors" ] || fail "run G wrote no checkpoints"
  close_losses "$TMP/c/metrics.jsonl" "$TMP/g/metrics.jsonl" 1 6 "train cuda vs cpu"
  same_weights "$TMP/c/model.safetensors" "$TMP/g/model.safetensors" "train cuda vs cpu, final weights"
  "$CMP" compare "$TMP/g/model.safetensors" model.patcher.lm_head.weight "$TMP/ent/model.safetensors" lm_head.weight \
    --atol 0 > /dev/null || fail "training on cuda changed the entropy model"
  # --resume across devices: G's step 3 continued on the CPU, run A's (CPU) step 3 continued on the GPU.
  resume_from "$TMP/g" 3 "$TMP/gc"
  "$BLT" train -c "$TMP/fixed.json" --data "$TMP/corpus.txt" -o "$TMP/gc" --resume > "$TMP/gc.log" 2>&1 ||
    fail "cpu resume of a cuda checkpoint failed: $(cat "$TMP/gc.log")"
  grep -q "resumed from" "$TMP/gc.log" || fail "the cpu run did not resume the cuda checkpoint"
  close_losses "$TMP/g/metrics.jsonl" "$TMP/gc/metrics.jsonl" 4 6 "cuda checkpoint resumed on cpu"
  same_weights "$TMP/g/model.safetensors" "$TMP/gc/model.safetensors" "cuda checkpoint resumed on cpu"
  resume_from "$TMP/a" 3 "$TMP/ag"
  "$BLT" train -c "$TMP/blt.json" --data "$TMP/corpus.txt" -o "$TMP/ag" --resume --device cuda > "$TMP/ag.log" 2>&1 ||
    fail "cuda resume of a cpu checkpoint failed: $(cat "$TMP/ag.log")"
  grep -q "resumed from" "$TMP/ag.log" || fail "the cuda run did not resume the cpu checkpoint"
  close_losses "$TMP/a/metrics.jsonl" "$TMP/ag/metrics.jsonl" 4 6 "cpu checkpoint resumed on cuda"
  same_weights "$TMP/a/model.safetensors" "$TMP/ag/model.safetensors" "cpu checkpoint resumed on cuda"
  # eval of one checkpoint (BLT and entropy model) on both devices.
  for m in g gent; do
    "$BLT" eval -m "$TMP/$m" --data "$TMP/corpus.txt" --seq-len 64 --max-windows 6 > "$TMP/ev_cpu.log" 2>&1 &&
      "$BLT" eval -m "$TMP/$m" --data "$TMP/corpus.txt" --seq-len 64 --max-windows 6 --device cuda > "$TMP/ev_cuda.log" 2>&1 ||
      fail "eval of $m failed: $(cat "$TMP/ev_cpu.log" "$TMP/ev_cuda.log")"
    close_num "$(eval_loss "$TMP/ev_cpu.log")" "$(eval_loss "$TMP/ev_cuda.log")" 1e-4 "eval of $m, cpu vs cuda loss"
    grep -q "^bpb: [0-9]" "$TMP/ev_cuda.log" || fail "eval --device cuda printed no bpb"
  done
  # Greedy generation: the CPU's bytes, cached and uncached.
  "$BLT" generate -m "$TMP/g" -p "Line " -n 24 --temp 0 --ignore-eos --ids-out "$TMP/gen_cpu.txt" > /dev/null 2>&1 ||
    fail "generate (cpu) failed"
  "$BLT" generate -m "$TMP/g" -p "Line " -n 24 --temp 0 --ignore-eos --device cuda --ids-out "$TMP/gen_cuda.txt" \
    > "$TMP/gen_cuda.log" 2>&1 || fail "generate --device cuda failed: $(cat "$TMP/gen_cuda.log")"
  "$BLT" generate -m "$TMP/g" -p "Line " -n 24 --temp 0 --ignore-eos --device cuda --no-cache --ids-out "$TMP/gen_cuda_nc.txt" \
    > /dev/null 2>&1 || fail "generate --device cuda --no-cache failed"
  cmp -s "$TMP/gen_cpu.txt" "$TMP/gen_cuda.txt" && cmp -s "$TMP/gen_cpu.txt" "$TMP/gen_cuda_nc.txt" &&
    echo "ok: greedy generation on cuda = cpu ($(wc -w < "$TMP/gen_cpu.txt") bytes)" ||
    fail "greedy ids differ: cpu '$(cat "$TMP/gen_cpu.txt")' cuda '$(cat "$TMP/gen_cuda.txt")' no-cache '$(cat "$TMP/gen_cuda_nc.txt")'"
  # bf16 mixed precision: eval close to fp32, a short training run with finite losses.
  "$BLT" eval -m "$TMP/g" --data "$TMP/corpus.txt" --seq-len 64 --max-windows 6 --device cuda --precision bf16 \
    > "$TMP/ev_bf16.log" 2>&1 || fail "eval --precision bf16 failed: $(cat "$TMP/ev_bf16.log")"
  "$BLT" eval -m "$TMP/g" --data "$TMP/corpus.txt" --seq-len 64 --max-windows 6 --device cuda > "$TMP/ev_g32.log" 2>&1
  close_num "$(eval_loss "$TMP/ev_g32.log")" "$(eval_loss "$TMP/ev_bf16.log")" 2e-2 "eval bf16 vs fp32 (BLT)"
  "$BLT" generate -m "$TMP/g" -p "Line " -n 24 --temp 0 --ignore-eos --device cuda --precision bf16 \
    --ids-out "$TMP/gen_bf16.txt" > "$TMP/gen_bf16.log" 2>&1 || fail "generate --precision bf16 failed: $(cat "$TMP/gen_bf16.log")"
  [ "$(wc -w < "$TMP/gen_bf16.txt")" = 24 ] || fail "generate --precision bf16 wrote $(wc -w < "$TMP/gen_bf16.txt") ids, not 24"
  "$BLT" train -c "$TMP/fixed.json" --data "$TMP/corpus.txt" -o "$TMP/h" --device cuda --precision bf16 --steps 3 \
    > "$TMP/h.log" 2>&1 || fail "train --precision bf16 failed: $(cat "$TMP/h.log")"
  grep -q "^device: cuda (bf16 compute)" "$TMP/h.log" || fail "train --precision bf16 did not report bf16"
  [ "$(losses "$TMP/h/metrics.jsonl" | awk '$2 + 0 == $2 && $2 > 0 && $2 < 100' | wc -l)" = 3 ] ||
    fail "bf16 training losses are not 3 finite numbers: $(losses "$TMP/h/metrics.jsonl" | tr '\n' ' ')"
  close_num "$(losses "$TMP/c/metrics.jsonl" | awk '$1 == 1 {print $2}')" "$(losses "$TMP/h/metrics.jsonl" | awk '$1 == 1 {print $2}')" \
    2e-2 "first training loss bf16 vs fp32"
fi

[ $fails -eq 0 ] && echo "all checks passed" || { echo "$fails check(s) failed"; exit 1; }
