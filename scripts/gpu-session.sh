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
#   tsc.log, bench.jsonl (one JSON line per benchmark), bench-summary.txt, train-*.log, cuda-kernels.log, attention.log.
# Order (each under its own timeout; the whole run is sized for ~9 minutes): build (~2-3 min) ->
# jest test/gpu (all files to the end, ~1-2 min; tsc builds dist/ meanwhile) -> bench/train --device
# cuda 1.1B LoRA, 1.1B QLoRA -> cuda-kernels -> attention -> 6.7B LoRA +gc -> the rest of the
# shapes while time remains (SESSION_BUDGET, default 540 s from the start).
# Environment: PEFTKIT_CUDA_ARCHS (default 90: the H200 only, to build fast; the full list is
# compiled by the CI compile check), BUILD_TIMEOUT (300), TEST_TIMEOUT (240), SESSION_BUDGET (540),
# SKIP_TESTS=1 (no jest: benchmark reruns), GPU_BENCH_STEPS (replace the benchmark list: shell code calling `bench <log> <timeout> <name> args...`),
# JOBS (cores), PEFTKIT_CMAKE_EXTRA (more cmake-js --CD flags).
#
# Rehearsal without a GPU: PEFTKIT_SESSION_EMU=1 bash scripts/gpu-session.sh runs the same flow on
# the dev machine against the CUDA emulator (docs/cuda.md): the addon is built with
# -DPEFTKIT_CUDA_EMU=ON into build-emu/ (build/ is left alone), dist goes to build-emu/dist, the
# system node is used when .device/node.xz is absent, logs go to build-emu/session-out, and the
# default benchmarks are tiny plumbing runs of the same entry points. Plumbing only: no kernel runs.
# PEFTKIT_SESSION_SIM=1 does the same against the CUDA simulator (build-sim/): the kernels run too.
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

EMU=${PEFTKIT_SESSION_EMU:-}
# PEFTKIT_SESSION_SIM=1: the same rehearsal on the CUDA simulator (the real kernels on CPU fibers,
# build-sim/): the benchmarks' kernels and cuBLASLt calls run too, not only their plumbing.
if [ -n "${PEFTKIT_SESSION_SIM:-}" ]; then EMU=1; reh_dir=build-sim; reh_flag=--CDPEFTKIT_CUDA_SIM=ON
else reh_dir=build-emu; reh_flag=--CDPEFTKIT_CUDA_EMU=ON; fi
if [ -n "$EMU" ]; then OUT=${OUT:-$root/$reh_dir/session-out}; else OUT=${OUT:-$root/gpu-out}; fi
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
set -x
summary() { echo "$1 rc=$2" | tee -a "$OUT/summary.txt"; }
session_t0=$(date +%s)
date
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv || true

# ---- node ----
if [ -n "$EMU" ] && [ ! -s .device/node.xz ] && command -v node >/dev/null; then
  echo "PEFTKIT_SESSION_EMU: using the system node ($(command -v node))"
else
  [ -s .device/node.xz ] || { echo "missing .device/node.xz: run 'bash scripts/gpu-session.sh prepare' on the dev machine and carry .device"; summary node 1; exit 1; }
  mkdir -p /tmp/nodebin
  [ -x /tmp/nodebin/node ] || { xz -dc .device/node.xz > /tmp/nodebin/node && chmod +x /tmp/nodebin/node; }
  export PATH=/tmp/nodebin:/usr/local/cuda/bin:$PATH
fi
node --version || { summary node 1; exit 1; }
if [ ! -d node_modules/jest ] || [ ! -d node_modules/cmake-js ]; then
  [ -s .device/node_modules.tar.xz ] || { echo "missing .device/node_modules.tar.xz"; summary node_modules 1; exit 1; }
  xz -dc .device/node_modules.tar.xz | tar -x -C "$root"
fi
summary node 0

# ---- build (cmake-js, PEFTKIT_CUDA=ON: fails loudly if nvcc or cuBLASLt is missing; the emulator
#      rehearsal builds -DPEFTKIT_CUDA_EMU=ON into build-emu/ instead) ----
JOBS=${JOBS:-$(nproc)}
if [ -n "$EMU" ]; then
  timeout "${BUILD_TIMEOUT:-300}" node node_modules/cmake-js/bin/cmake-js compile --out "$reh_dir" --parallel "$JOBS" \
    "$reh_flag" ${PEFTKIT_CMAKE_EXTRA:-} > "$OUT/build.log" 2>&1
  rc=$?
  addon_dir=$reh_dir
else
  export CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}
  ARCHS=${PEFTKIT_CUDA_ARCHS:-90}
  timeout "${BUILD_TIMEOUT:-300}" node node_modules/cmake-js/bin/cmake-js compile --parallel "$JOBS" \
    --CDPEFTKIT_CUDA=ON "--CDPEFTKIT_CUDA_ARCHS=$ARCHS" ${PEFTKIT_CMAKE_EXTRA:-} > "$OUT/build.log" 2>&1
  rc=$?
  addon_dir=build
fi
summary build $rc
if [ $rc -ne 0 ]; then tail -60 "$OUT/build.log"; exit $rc; fi
grep -E "peftkit:|warning" "$OUT/build.log" | head -40
export PEFTKIT_ADDON="$root/$addon_dir/Release/peftkit.node"
timeout 60 node -e "const a=require(process.env.PEFTKIT_ADDON); console.log(JSON.stringify(a.cudaInfo(),null,1))" > "$OUT/cuda-info.json" 2>&1
summary cuda-info $?
cat "$OUT/cuda-info.json"

# ---- dist/ for the benchmarks (tsc in the background while the GPU tests run; the rehearsal
#      compiles the current lib/ into build-emu/dist and leaves dist/ alone) ----
if [ -n "$EMU" ]; then export PEFTKIT_DIST="$root/$reh_dir/dist"; tsc_out=(--outDir "$PEFTKIT_DIST"); else tsc_out=(); fi
if [ -n "$EMU" ] || [ ! -f dist/index.js ]; then
  ( timeout 180 node node_modules/typescript/bin/tsc -p tsconfig.json ${tsc_out[@]+"${tsc_out[@]}"} > "$OUT/tsc.log" 2>&1; echo $? > "$OUT/tsc.rc" ) &
  tsc_pid=$!
else
  tsc_pid=""; echo 0 > "$OUT/tsc.rc"
fi

# ---- GPU tests (every file runs to the end: we want all failures from one session) ----
if [ -n "${SKIP_TESTS:-}" ]; then echo "SKIP_TESTS set: no jest" > "$OUT/jest-gpu.log"; rc=skipped
else timeout "${TEST_TIMEOUT:-240}" node node_modules/jest/bin/jest.js test/gpu --ci --verbose > "$OUT/jest-gpu.log" 2>&1; rc=$?; fi
summary jest-gpu $rc
grep -E "^(PASS|FAIL) |✕|Tests:|cuda f32|cuda bf16|lora fixture on cuda|qlora losses" "$OUT/jest-gpu.log" | head -60
[ -n "$tsc_pid" ] && wait "$tsc_pid"
summary tsc "$(cat "$OUT/tsc.rc" 2>/dev/null || echo 1)"

# ---- GPU benchmarks, in priority order, each under its own timeout; a step is skipped when the
#      session deadline (SESSION_BUDGET seconds after the start, default 540) leaves less than its
#      timeout. Each bench/train run is its own process (peak GPU memory is per process). ----
deadline=$(( session_t0 + ${SESSION_BUDGET:-540} ))
bench() {   # bench <log name> <timeout s> <bench name> [args...]
  local name=$1 to=$2; shift 2
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt "$to" ]; then echo "$name: skipped (${left}s left of the session budget, needs ${to}s)"; summary "$name" skipped; return; fi
  timeout "$to" node scripts/bench.js "$@" --json > "$OUT/$name.log" 2>&1
  local r=$?
  summary "$name" $r
  grep -v '^{' "$OUT/$name.log" | tail -4
  tail -1 "$OUT/$name.log" | grep '^{' >> "$OUT/bench.jsonl"
}
if [ -n "${GPU_BENCH_STEPS:-}" ]; then
  eval "$GPU_BENCH_STEPS"
elif [ -n "$EMU" ]; then
  # the same entry points as the list below, on shapes a CPU runs in seconds
  small="--layers 2 --batch 2 --seq 64 --steps 2 --warmup 1"
  bench train-1.1b-lora      120 train --device cuda --shape 1.1b $small
  bench train-1.1b-qlora     120 train --device cuda --shape 1.1b $small --qlora
  bench cuda-kernels          75 cuda-kernels --device cuda --tiny
  bench attention             75 attention --device cuda --tiny
  bench train-1.1b-lora-gc    90 train --device cuda --shape 1.1b $small --gc
  bench train-6.7b-qlora-gc  120 train --device cuda --shape 6.7b --layers 1 --batch 1 --seq 32 --steps 1 --warmup 1 --gc --qlora
  bench train-1.1b-qlora-gc-offload 90 train --device cuda --shape 1.1b $small --gc --qlora --offload
else
  bench train-1.1b-lora      120 train --device cuda --shape 1.1b
  bench train-1.1b-qlora     120 train --device cuda --shape 1.1b --qlora
  bench cuda-kernels          75 cuda-kernels --device cuda
  bench attention             75 attention --device cuda
  bench train-6.7b-lora-gc   120 train --device cuda --shape 6.7b --gc
  bench train-1.1b-lora-gc    90 train --device cuda --shape 1.1b --gc
  bench train-6.7b-qlora-gc  120 train --device cuda --shape 6.7b --gc --qlora
  bench train-6.7b-lora      120 train --device cuda --shape 6.7b
  bench train-8b-lora-gc     150 train --device cuda --shape 8b --gc
  bench train-8b-qlora-gc-offload 150 train --device cuda --shape 8b --gc --qlora --offload
fi
[ -s "$OUT/bench.jsonl" ] && node -e '
  const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter(Boolean);
  for (const r of rows) {
    if (r.bench !== "train") continue;
    console.log(`${r.emulated ? "[EMULATED, not GPU figures] " : ""}${r.shape} ${r.method}${r.gradientCheckpointing ? " +gc" : ""}${r.offloadActivations ? " +offload" : ""} B${r.batch}xT${r.seq}: ${Math.round(r.tokensPerSec)} tok/s, peak ${r.peakGiB.toFixed(1)} GiB, MFU ${(100 * r.mfu).toFixed(1)}%` +
      (r.hfPeft ? `  vs HF PEFT ${r.speedupVsHf.toFixed(2)}x speed, ${r.memoryVsHf.toFixed(2)}x memory` : ""));
  }' "$OUT/bench.jsonl" | tee "$OUT/bench-summary.txt"
nvidia-smi --query-gpu=memory.used --format=csv || true
cat "$OUT/summary.txt"
date
grep -q "rc=[1-9]" "$OUT/summary.txt" && exit 1
exit 0
