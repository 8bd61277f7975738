#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one short run (the device tool lends one to some sessions):
# the CUDA-vs-CPU bit-exactness test and the accelerator dequantization benchmark at Qwen3-8B's shape.
# Runs with the machine's own python3 (torch, transformers, safetensors); no vLLM needed. Needs the test
# fixtures in .cache/fixtures (built here by scripts/test.sh). Writes figures to ${OUT:-results}.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" VLLM_MLX_FIXTURES="$PWD/.cache/fixtures"
OUT=${OUT:-results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 setup.py -q build_ext --inplace >/dev/null 2>&1 && echo "C kernel built" || echo "C kernel not built: CPU side uses torch"
python3 -m pytest -q -p no:cacheprovider tests/test_determinism.py -k cuda 2>&1 | tail -3
CKPT=${TMPDIR:-/tmp}/qwen3-8b-q4g64
[ -d "$CKPT" ] || python3 benchmarks/synthetic_checkpoint.py "$CKPT" --shape qwen3-8b --bits 4 --group-size 64
python3 benchmarks/bench_device_dequant.py --device cuda --shape qwen3-8b --bits 4 --group-size 64 \
    --checkpoint "$CKPT" --json "$OUT/device-dequant-cuda.json"
