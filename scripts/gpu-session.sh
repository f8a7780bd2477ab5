#!/usr/bin/env bash
# gpu-session.sh — one script for the GPU machine (CUDA 13 + cuBLASLt, no Node.js, no network).
#
#   bash scripts/gpu-session.sh prepare   # here, on the dev machine: fill .device/ (git-ignored)
#   bash scripts/gpu-session.sh           # there: unpack node + node_modules, build the addon with
#                                         # PEFTKIT_CUDA=ON, run `jest test/gpu`, then GPU benchmarks
#
# `prepare` runs ../shared/gpu/pack-node.sh (node binary + Node-API headers -> .device/) and packs
# node_modules (jest, ts-jest, typescript, cmake-js, node-api-headers: ~10 MB xz) into
# .device/node_modules.tar.xz. Send it with the device tool: carry [".device"].
# On the device every step has a timeout and writes its log under $OUT (default ./gpu-out):
#   session.log (this script, set -x), nvidia-smi.txt, build.log, cuda-info.json, jest-gpu.log,
#   bench-<name>.log, summary.txt (one line per step with its exit code).
# Environment: PEFTKIT_CUDA_ARCHS (default 90: the H200 only, to build fast; the full list is
# compiled by the CI compile check), GPU_BENCHES (default "cuda-kernels train gemm attention"; run only when the bench source mentions cuda), BUILD_TIMEOUT (600),
# TEST_TIMEOUT (420), BENCH_TIMEOUT (300), JOBS (cores), PEFTKIT_CMAKE_EXTRA (more cmake-js --CD flags).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-run}

if [ "$mode" = prepare ]; then
  set -e
  pack="$root/../shared/gpu/pack-node.sh"
  [ -x "$pack" ] || pack="bash $pack"
  $pack
  if [ ! -s .device/node_modules.tar.xz ] || [ package-lock.json -nt .device/node_modules.tar.xz ]; then
    tar -C "$root" -cf - node_modules | xz -T2 -6 > .device/node_modules.tar.xz.tmp
    mv .device/node_modules.tar.xz.tmp .device/node_modules.tar.xz
  fi
  du -sh .device .device/*
  echo "ready: run on the device: bash scripts/gpu-session.sh   (carry: [\".device\"]; logs come back under \$OUT)"
  exit 0
fi

OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
set -x
summary() { echo "$1 rc=$2" | tee -a "$OUT/summary.txt"; }
date
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv || true

# ---- node ----
[ -s .device/node.xz ] || { echo "missing .device/node.xz: run 'bash scripts/gpu-session.sh prepare' on the dev machine and carry .device"; summary node 1; exit 1; }
mkdir -p /tmp/nodebin
[ -x /tmp/nodebin/node ] || { xz -dc .device/node.xz > /tmp/nodebin/node && chmod +x /tmp/nodebin/node; }
export PATH=/tmp/nodebin:/usr/local/cuda/bin:$PATH
node --version || { summary node 1; exit 1; }
if [ ! -d node_modules/jest ] || [ ! -d node_modules/cmake-js ]; then
  [ -s .device/node_modules.tar.xz ] || { echo "missing .device/node_modules.tar.xz"; summary node_modules 1; exit 1; }
  xz -dc .device/node_modules.tar.xz | tar -x -C "$root"
fi
summary node 0

# ---- build (cmake-js, PEFTKIT_CUDA=ON: fails loudly if nvcc or cuBLASLt is missing) ----
export CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}
JOBS=${JOBS:-$(nproc)}
ARCHS=${PEFTKIT_CUDA_ARCHS:-90}
timeout "${BUILD_TIMEOUT:-600}" node node_modules/cmake-js/bin/cmake-js compile --parallel "$JOBS" \
  --CDPEFTKIT_CUDA=ON "--CDPEFTKIT_CUDA_ARCHS=$ARCHS" ${PEFTKIT_CMAKE_EXTRA:-} > "$OUT/build.log" 2>&1
rc=$?
summary build $rc
if [ $rc -ne 0 ]; then tail -60 "$OUT/build.log"; exit $rc; fi
grep -E "peftkit:|warning" "$OUT/build.log" | head -40
export PEFTKIT_ADDON="$root/build/Release/peftkit.node"
timeout 60 node -e "const a=require(process.env.PEFTKIT_ADDON); console.log(JSON.stringify(a.cudaInfo(),null,1))" > "$OUT/cuda-info.json" 2>&1
summary cuda-info $?
cat "$OUT/cuda-info.json"

# ---- GPU tests ----
timeout "${TEST_TIMEOUT:-420}" node node_modules/jest/bin/jest.js test/gpu --ci --verbose > "$OUT/jest-gpu.log" 2>&1
rc=$?
summary jest-gpu $rc
tail -80 "$OUT/jest-gpu.log"

# ---- GPU benchmarks: those present that know about cuda (CPU-only benches would waste device time) ----
for b in ${GPU_BENCHES:-cuda-kernels train gemm attention}; do
  src=""
  for f in "bench/$b.js" "bench/$b/index.js"; do [ -f "$f" ] && src=$f; done
  if [ -z "$src" ]; then echo "no bench/$b: skipped"; continue; fi
  if ! grep -qi "cuda" "$src"; then echo "bench/$b has no cuda path: skipped"; continue; fi
  if [ ! -f dist/index.js ]; then
    timeout 180 node node_modules/typescript/bin/tsc -p tsconfig.json > "$OUT/tsc.log" 2>&1
    summary tsc $?
  fi
  timeout "${BENCH_TIMEOUT:-300}" node scripts/bench.js "$b" --device cuda --json > "$OUT/bench-$b.log" 2>&1
  summary "bench-$b" $?
  tail -5 "$OUT/bench-$b.log"
done
nvidia-smi --query-gpu=memory.used --format=csv || true
cat "$OUT/summary.txt"
date
grep -q "rc=[1-9]" "$OUT/summary.txt" && exit 1
exit 0
