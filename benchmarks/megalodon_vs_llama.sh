#!/usr/bin/env bash
# Megalodon against the Llama-style byte transformer of similar size on the same GCIDE bytes: the same data
# split, batch (8 x 256 bytes), steps, schedule, optimizer and seed; one thread each, run one after the other.
# Prints held-out bits per byte at the end and the mean training tokens/s (from metrics.jsonl).
#   benchmarks/megalodon_vs_llama.sh [build-dir] [steps]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build}
steps=${2:-1000}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
cmake --build "$build" --target tessera-lm megalodon >/dev/null
run() {  # name, command...
  local name=$1
  shift
  "$@" >"$out/$name.log" 2>&1 || { cat "$out/$name.log"; exit 1; }
}
run llama "$build/apps/lm/tessera-lm" train -c benchmarks/configs/mvl_llama.json -o "$out/llama" --steps "$steps"
run megalodon "$build/apps/megalodon/megalodon" train -c benchmarks/configs/mvl_megalodon.json -o "$out/megalodon" \
  --steps "$steps"
/usr/bin/python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
print("| model | parameters | held-out bits per byte | training tokens/s (mean) |")
print("|---|---|---|---|")
for name in ("llama", "megalodon"):
    log = open(f"{out}/{name}.log").read()
    params = re.search(r"(\d+) parameters", log).group(1)
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    toks = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    evals = [r["eval"]["val_bpb"] for r in rows if "val_bpb" in r.get("eval", {})]
    print(f"| {name} | {int(params):,} | {evals[-1]:.3f} | {sum(toks) / len(toks):,.0f} |")
PY
