#!/usr/bin/env bash
# The first GPU session's check, about 10 minutes on one card: make doctor, the GPU tests, make bench-gpu (quick).
# Everything goes under $OUT (the device tool's output folder; default results/gpu-check), logs included:
#   nvidia-smi.txt  doctor.log doctor.json  gpu_tests.log  bench/ bench_gpu.log  summary.txt
# Runs from the repository root with PYTHONPATH=. and the machine's python3 (torch preinstalled, no network): the
# venv's python where there is one. Each part has its own time limit, so one that hangs cannot starve the others;
# a part that fails is logged and the next one runs. Record every figure in BENCHMARKS.md with card, date, command.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=. COMHE_OFFLINE=1 COMHE_DATA="$OUT/data"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
summary="$OUT/summary.txt"
: > "$summary"

part() {  # part NAME SECONDS LOG COMMAND...: run with a time limit, log, note the exit code
    local name=$1 limit=$2 log=$3
    shift 3
    local start=$SECONDS
    timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$OUT/$log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s (limit $limit s; log $log)" | tee -a "$summary"
}

{ date -u +"%Y-%m-%d %H:%M UTC"; nvidia-smi; } > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda',
torch.version.cuda, 'available', torch.cuda.is_available())" | tee -a "$summary"
for module in pytest yaml pandas; do  # what the parts need beyond torch; a missing one is named, not guessed at
    "$PY" -c "import $module" 2>/dev/null || echo "missing python module: $module" | tee -a "$summary"
done

part doctor 150 doctor.log "$PY" -m comhe.suite.doctor --results "$OUT"
part gpu-tests 170 gpu_tests.log "$PY" -m pytest -q -rs -p no:cacheprovider tests/train/test_gpu.py \
    tests/train/test_gpu_steps.py tests/train/test_steps.py tests/train/test_points_cuda.py
part bench-gpu 250 bench_gpu.log "$PY" -m comhe.bench.gpu --quick --budget-s 200 --out "$OUT/bench"
cat "$summary"
