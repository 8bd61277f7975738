"""Which family a checkpoint is, decided the way mlx-lm decided which `sanitize` to run when it converted it.

mlx-lm picks the module that converts (and so what it renamed, restacked or changed) by `config.json`'s
`model_type`, through two remapping tables; vLLM picks the model class by `architectures`. A checkpoint is served
only if the pair (`model_type`, `architectures[0]`) is one an adapter lists: names and shapes alone cannot tell a
family whose values mlx-lm changed from one it stored as is (Qwen3-Next adds 1 to its norms, Falcon-H1 folds
multipliers into its weights, neither changing a shape). Everything else is refused, naming its model type and,
where it is known, why.
"""

from __future__ import annotations

from typing import Any

from ..errors import MLXCheckpointError

# mlx-lm 0.32.2's `MODEL_REMAPPING` and `MODEL_ARCHITECTURE_REMAPPING` (mlx_lm/utils.py), held equal by a test
MLX_LM_MODEL_REMAPPING = {
    "mistral": "llama", "llava": "mistral3", "phi-msft": "phixtral", "falcon_mamba": "mamba",
    "joyai_llm_flash": "deepseek_v3", "kimi_k2": "deepseek_v3", "qwen2_5_vl": "qwen2_vl", "minimax_m2": "minimax",
    "iquestcoder": "llama", "xverse": "llama", "gemma4_unified": "gemma4", "deepseek_v41_text": "deepseek_v41",
}
MLX_LM_ARCHITECTURE_REMAPPING = {("bailing_hybrid", "BailingMoeV3ForCausalLM"): "bailing_moe_v3"}

# model types transformers has no config for, built as the family their architecture belongs to (Kimi K2 is a
# DeepSeek-V3 with other sizes; its checkpoints carry `DeepseekV3ForCausalLM`)
TRANSFORMERS_MODEL_TYPE = {"kimi_k2": "deepseek_v3"}
# architectures transformers spells otherwise (checkpoints and vLLM keep the original name)
TRANSFORMERS_CLASS = {"PhiMoEForCausalLM": "PhimoeForCausalLM"}

# why a model type mlx-lm writes is refused, where the reason is more than "not mapped yet"
REFUSAL_REASONS = {
    "ernie4_5_moe": "mlx-lm drops the router's e_score_correction_bias, which vLLM's model uses: the original "
    "model cannot be restored from the conversion",
    "bitnet": "mlx-lm keeps BitNet's own ternary packing (weight_scale), not an MLX quantization",
    "llama4_text": "mlx-lm's llama4_text module is a dense model whose names are not Hugging Face's Llama 4",
    "nanochat": "mlx-lm keeps nanochat's original names (transformer.h.*), not transformers'",
    "olmo": "mlx-lm's olmo module reads AI2's original format (ai2-olmo), not transformers' OLMo",
    "minimax": "mlx-lm's minimax module is MiniMax-M2's: it cannot have converted MiniMax-Text-01",
}
NOT_SERVED_BY_VLLM = (
    "Klear", "afm7", "baichuan_m1", "gear", "lille-130m", "muse_spark", "openelm", "phi3small", "phixtral",
    "phi-msft", "plamo", "plamo2", "prism_hadamard_qwen35", "qwen", "rwkv7", "spark2_5", "talkie", "xverse",
)


def mlx_lm_module(config: dict[str, Any]) -> str | None:
    """The mlx-lm model module (`mlx_lm/models/<name>.py`) that converted a checkpoint with this config."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return None
    archs = config.get("architectures")
    for arch in [archs] if isinstance(archs, str) else archs if isinstance(archs, list) else []:
        if isinstance(arch, str) and (model_type, arch) in MLX_LM_ARCHITECTURE_REMAPPING:
            return MLX_LM_ARCHITECTURE_REMAPPING[model_type, arch]
    return MLX_LM_MODEL_REMAPPING.get(model_type, model_type)


def identity(config: dict[str, Any]) -> tuple[Any, Any]:
    """(model_type, architectures[0]) as config.json gives them (not checked)."""
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else archs
    return config.get("model_type"), arch


def refusal(config: dict[str, Any], where: str, served: list[tuple[str, str]]) -> MLXCheckpointError:
    model_type, arch = identity(config)
    if not isinstance(arch, str):
        return MLXCheckpointError(where, f"names no architecture (architectures: {config.get('architectures')!r}).",
                                  "Use the config.json the checkpoint was converted with.")
    if not isinstance(model_type, str):
        return MLXCheckpointError(where, f"has no model_type (architecture {arch!r}): mlx-lm and vllm-mlx-loader "
                                  "decide the family by it.", "Use the config.json the checkpoint was converted with.")
    why = why_refused(model_type, arch, served)
    return MLXCheckpointError(
        where, f"model type {model_type!r} with architecture {arch!r} is refused: {why}",
        "The README's table of model types says what is served; open an issue with the checkpoint's config.json.",
    )


def why_refused(model_type: str, arch: str | None, served: list[tuple[str, str]]) -> str:
    """Why a (model type, architecture) pair off the allowlist is refused, in a sentence."""
    same_arch = sorted(t for t, a in served if a == arch)
    if model_type in REFUSAL_REASONS:
        return REFUSAL_REASONS[model_type] + "."
    if model_type in NOT_SERVED_BY_VLLM:
        return "vLLM does not serve this family."
    if same_arch:
        module = mlx_lm_module({"model_type": model_type, "architectures": [arch]})
        return (f"{arch} is served for model type {', '.join(map(repr, same_arch))}; mlx-lm converts {model_type!r} "
                f"with its {module!r} module, which this loader does not know.")
    return "it has no MLX-to-vLLM mapping in vllm-mlx-loader yet."
