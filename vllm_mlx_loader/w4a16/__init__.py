"""Opt-in W4A16 (`--quantization mlx`): MLX 4-bit affine linear layers kept packed on the device.

`kernel.py` is what every backend shares: the layer's tensors as the checkpoint stores them, the split form's
correction, and the per-call dequantizing fallback (the reference every kernel is tested against); `experts.py`
computes MoE experts expert by expert through any of them; one module per device kernel (`ascend.py`; the CPU's,
which needs vLLM's own op, is `vllm/int4_cpu.py`). docs/w4a16.md
describes the math, the layouts and what ran where. No vLLM import here.
"""
