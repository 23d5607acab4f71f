#!/usr/bin/env bash
# BLT inference speed on the CPU, tessera (`blt generate`, cached; fp32, and with bf16 weights:
# --precision bf16) against Hugging Face transformers' BltForCausalLM (benchmarks/compare_blt_hf.py: forward
# and generate(use_cache=False), fp32), same weights, same bytes, same thread count, in one run. Prints a
# Markdown table.
#   benchmarks/run_blt_speed.sh [tiny|bench ...]
# Needs: a build with the `blt` target (BLT=path/to/blt), the transformers virtualenv of tools/reference
# (PY=/work/venv-blt/bin/python) and, for `bench`, the model compare_blt_hf.py saves in /work/blt-bench-model.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-/work/venv-blt/bin/python}
BLT=${BLT:-build/apps/blt/blt}
BENCH_DIR=${BENCH_DIR:-/work/blt-bench-model}
models=("${@:-tiny}")
[[ -x $BLT ]] || { echo "run_blt_speed: no blt binary at $BLT (cmake --build build --target blt)" >&2; exit 1; }
[[ -x $PY ]] || { echo "run_blt_speed: no python with transformers at $PY" >&2; exit 1; }

hex_prompt() { (cd benchmarks && "$PY" -c "import compare_blt_hf as m; print(m.prompt_bytes($1).hex())"); }
p_prefill=$(hex_prompt 1023)
p_gen=$(hex_prompt 127)
echo "date: $(date -u +%Y-%m-%dT%H:%MZ) | cpu: $(lscpu | sed -n 's/^Model name: *//p') | load: $(cut -d' ' -f1 /proc/loadavg)"
echo
echo "| model | threads | prefill 1024 ids: tessera B/s | HF B/s | ratio | generate 64 B: tessera B/s | HF B/s | ratio | tessera, bf16 weights: prefill B/s | generate B/s | generate ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for model in "${models[@]}"; do
  case $model in
    tiny) dir=tests/fixtures/blt-hf-tiny ;;
    bench) dir=$BENCH_DIR ;;
    *) echo "unknown model $model" >&2; exit 2 ;;
  esac
  for t in 1 2; do
    export OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t
    # tessera: best of 3 runs per precision (each run loads the model once; the numbers are the tool's own
    # timers)
    for prec in fp32 bf16; do
      best_pre=0 best_gen=0
      for _ in 1 2 3; do
        pre=$("$BLT" generate -m "$dir" --prompt-hex "$p_prefill" -n 1 --temp 0 --ignore-eos --precision "$prec" |
              sed -n 's/.*prefill: [0-9]* bytes in [0-9.]* ms (\([0-9.]*\) bytes\/s).*/\1/p')
        gen=$("$BLT" generate -m "$dir" --prompt-hex "$p_gen" -n 64 --temp 0 --ignore-eos --precision "$prec" |
              sed -n 's/.*generation: [0-9]* bytes in [0-9.]* ms (\([0-9.]*\) bytes\/s).*/\1/p')
        best_pre=$(awk -v a="$best_pre" -v b="$pre" 'BEGIN{print (b>a)?b:a}')
        best_gen=$(awk -v a="$best_gen" -v b="$gen" 'BEGIN{print (b>a)?b:a}')
      done
      eval "pre_$prec=\$best_pre gen_$prec=\$best_gen"
    done
    hf=$("$PY" benchmarks/compare_blt_hf.py --models "$model" --threads "$t" --repeats 3 --gen-repeats 1 2>/dev/null |
         sed -n 's/.*prefill \([0-9]*\) ids: [0-9.]* ms (\([0-9]*\) B\/s.*generate [0-9]* bytes: [0-9.]* s (\([0-9.]*\) B\/s).*/\2 \3/p' | head -1)
    read -r hf_pre hf_gen <<<"$hf"
    awk -v m="$model" -v t="$t" -v a="$pre_fp32" -v b="$hf_pre" -v c="$gen_fp32" -v d="$hf_gen" \
      -v e="$pre_bf16" -v f="$gen_bf16" \
      'BEGIN{printf "| %s | %d | %.0f | %.0f | %.1fx | %.0f | %.1f | %.0fx | %.0f | %.0f | %.0fx |\n",
             m, t, a, b, a/b, c, d, c/d, e, f, f/d}'
  done
done
