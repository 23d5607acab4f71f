#!/usr/bin/env bash
# Build tessera's CPU benchmarks, run them and the PyTorch eager baseline at 1 and 2 threads, print a Markdown
# table (tessera vs PyTorch, ratio, GEMM GFLOP/s).
#
#   benchmarks/run_cpu.sh                 # build dir build-bench, threads "1 2"
#   THREADS="1 2 4" BUILD=build-x benchmarks/run_cpu.sh
#   WAIT_QUIET=1 benchmarks/run_cpu.sh    # first wait (2-minute steps, up to 40 min) for 1-min load < 1.0
#
#   OMP_WAIT_POLICY=passive OUT=build-bench/bench-results-passive benchmarks/run_cpu.sh   # a variant
#
# Threads: tessera runs its own loops with OpenMP and its GEMMs in OpenBLAS (Debian's pthreads build, through
# Eigen's EIGEN_USE_BLAS; a TESSERA_USE_BLAS=OFF build uses Eigen's kernel on the OpenMP team instead);
# PyTorch uses OpenMP for ATen and the same OpenBLAS for GEMMs. Both pools are capped at N for both programs
# via OMP_NUM_THREADS and OPENBLAS_NUM_THREADS; any other OMP_*/OPENBLAS_* variables are passed through and
# recorded. See benchmarks/RESULTS.md for why the two pools matter.
# Results (Google Benchmark JSON, torch JSON, context.txt, table.md) go to $OUT (default $BUILD/bench-results).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build-bench}
[[ $BUILD = /* ]] || BUILD="$ROOT/$BUILD"
THREADS=${THREADS:-"1 2"}
PY=${PY:-/usr/bin/python3}  # Debian's python3 has torch 1.13; a pyenv `python3` on PATH does not
OUT=${OUT:-"$BUILD/bench-results"}
BENCHES=(bench_train_step bench_gemm bench_attention)

if [[ ! -f $BUILD/CMakeCache.txt ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTESSERA_CUDA=OFF
fi
cmake --build "$BUILD" -j2 --target "${BENCHES[@]}"

if [[ ${WAIT_QUIET:-0} = 1 ]]; then
  for _ in $(seq 20); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    awk -v l="$load" 'BEGIN { exit !(l < 1.0) }' && break
    echo "load average $load >= 1.0: waiting 2 minutes" >&2
    sleep 120
  done
fi

mkdir -p "$OUT"

# Busy CPU time of the whole machine so far, in clock ticks (/proc/stat: user nice system idle iowait irq
# softirq steal ...).
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# Run a command and append to context.txt how much CPU OTHER processes used meanwhile, as a share of all
# cores. A 2-thread number is only trustworthy when that share is near 0: on 2 cores any foreign process
# takes a core away from a thread team that spin-waits at every barrier.
measured() {
  local label=$1 tf b0 b1 t0 t1
  shift
  tf=$(mktemp)
  b0=$(busy_ticks)
  t0=$(date +%s.%N)
  { TIMEFORMAT='%U %S'; time "$@" 2>&3; } 3>&2 2>"$tf"
  t1=$(date +%s.%N)
  b1=$(busy_ticks)
  awk -v l="$label" -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" \
      -v nc="$(nproc)" -v ld="$(cut -d' ' -f1 /proc/loadavg)" '{ own = $1 + $2 } END {
        wall = t1 - t0; foreign = ((b1 - b0) / hz - own) / (wall * nc) * 100; if (foreign < 0) foreign = 0
        printf "%s: wall %.1f s, own CPU %.1f s, foreign CPU %.1f%% of the machine, load after %s\n", \
               l, wall, own, foreign, ld }' "$tf" >> "$OUT/context.txt"
  rm -f "$tf"
}
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') | $(nproc) cores"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  blas=$(ldd "$BUILD/benchmarks/bench_gemm" | grep -Eo 'lib(open)?blas[^ ]*' | sort -u | tr '\n' ' ' || true)
  echo "tessera GEMM: ${blas:-Eigen GEBP kernel, no BLAS (TESSERA_USE_BLAS=OFF)}"
  echo "openblas: $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)"
  echo "environment: $(env | grep -E '^(OMP_|GOMP_|OPENBLAS_|KMP_)' | sort | tr '\n' ' ')"
} | tee "$OUT/context.txt"

for n in $THREADS; do
  export OMP_NUM_THREADS=$n OPENBLAS_NUM_THREADS=$n
  for b in "${BENCHES[@]}"; do
    echo "== $b, $n thread(s)" >&2
    measured "$b ${n}T" "$BUILD/benchmarks/$b" --benchmark_min_time=0.3 --benchmark_out="$OUT/${b}_$n.json" \
      --benchmark_out_format=json >&2
  done
  echo "== PyTorch, $n thread(s)" >&2
  measured "pytorch ${n}T" "$PY" "$ROOT/benchmarks/compare_pytorch.py" measure --threads "$n" > "$OUT/torch_$n.json"
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/context.txt"
grep -E '^(bench_|pytorch|load at end)' "$OUT/context.txt"

torch_files=()
for n in $THREADS; do torch_files+=("$OUT/torch_$n.json"); done
"$PY" "$ROOT/benchmarks/compare_pytorch.py" table --tessera-dir "$OUT" --torch "${torch_files[@]}" | tee "$OUT/table.md"
