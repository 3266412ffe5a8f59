#!/usr/bin/env bash
# Every GPU measurement in one go, for a session that has one GPU for a few minutes:
#   1. the engine benchmark at the paper's scale (128³ crops, width x1, batch 10): step time, share
#      of the bf16 peak, loader wait, peak memory, batched evaluation, one compiled variant;
#   2. bf16 parity on the GPU (the quick joint model, two seeds, fp32 and bf16);
#   3. the `gpu` preset's whole study, then its reference run (mmlib/reference/gpu-<device>/).
# Everything lands under OUT (default runs/gpu-checks); each step's wall time in OUT/times.txt.
# Steps can be chosen: bash benchmarks/gpu_checks.sh bench parity study
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-checks}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
MMLIB=("$PY" -m mmlib)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(bench parity study)
mkdir -p "$OUT"
"$PY" -c 'import sys, torch; torch.cuda.is_available() or sys.exit("gpu_checks: no CUDA device here"); print(torch.cuda.get_device_name(0))' \
  | tee "$OUT/device.txt" || exit 2

timed() {  # name, command...: run it, keep its log and wall time
  local name=$1; shift
  local t0; t0=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
  return $rc
}

for step in "${steps[@]}"; do
  case $step in
    bench)
      timed bench "$PY" benchmarks/bench_engine.py --device cuda --compile --json "$OUT/bench_engine.json" ;;
    parity)
      timed twins "${MMLIB[@]}" synth --preset quick --out "$OUT/twins"
      timed parity "$PY" benchmarks/bf16_parity.py --device cuda --data "$OUT/twins" --cache "$OUT/cache" \
        --seeds 0 1 --json "$OUT/bf16_parity.json" ;;
    study)
      t0=$(date +%s)
      timed study "${MMLIB[@]}" study --preset gpu --out "$OUT/study" && {
        name="gpu-$(tr -cs 'A-Za-z0-9' '-' < "$OUT/device.txt" | tr 'A-Z' 'a-z' | sed 's/-*$//')"
        timed reference "${MMLIB[@]}" reference "$OUT/study" --name "$name" \
          --wall-time "$(( ($(date +%s) - t0) / 60 )) min $(( ($(date +%s) - t0) % 60 )) s"
      } ;;
    *) echo "unknown step $step (bench, parity, study)" >&2; exit 2 ;;
  esac
done
