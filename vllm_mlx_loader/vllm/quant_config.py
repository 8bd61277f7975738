"""`--quantization mlx`: the `QuantizationConfig` that keeps MLX 4-bit affine linear layers packed (W4A16).

The engine hook hands it, through `hf_overrides["quantization_config"]`, one entry per quantized module of the
checkpoint as the loader reads it (`modules`: Hugging Face module name -> bits, group size, mode), so the decision
rests on what the shards hold, not on what config.json's defaults suggest. `get_quant_method` claims a linear layer
when every checkpoint module it is made of (q/k/v for a fused qkv_proj, gate/up for gate_up_proj) is 4-bit affine
with one group size, and likewise an embedding and `lm_head` (a tied `lm_head` computes through its 4-bit
embedding); a mixture-of-experts layer when all its experts are (`experts`: the stacks' module prefix -> entry,
with the projections and the count). Everything else (8-bit or float-mode layers) keeps the plugin's BF16 path,
each layer with its reason, which the loader logs once per class.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

NAME = "mlx"


def module_entry(bits: int, group_size: int, mode: str) -> dict[str, Any]:
    return {"bits": bits, "group_size": group_size, "mode": mode}


def stored_as(mode: str, bits: int) -> str:
    """The reason a layer stored in another mode or width than 4-bit affine keeps the BF16 path."""
    return f"{bits}-bit {mode} in the checkpoint" if mode == "affine" else f"{mode} in the checkpoint"


def unquantized(reason: str) -> UnquantizedLinearMethod:
    method = UnquantizedLinearMethod()
    method.mlx_reason = reason  # read by the loader's summary of decisions
    return method


class MLXQuantConfig(QuantizationConfig):
    def __init__(self, modules: dict[str, dict[str, Any]], tied: bool = False,
                 experts: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.modules = dict(modules)  # vLLM module name -> checkpoint entry (with "source": the HF name)
        self.experts = dict(experts or {})  # vLLM MoE layer name -> entry of its experts (with "source")
        self.tied = tied  # the checkpoint has no lm_head: the model ties it to the embedding
        self.embeddings: dict[int, torch.nn.Module] = {}  # 4-bit embeddings as made (a tied head finds its own)
        self._kernel = None

    def __repr__(self) -> str:
        return f"MLXQuantConfig({len(self.modules)} quantized modules)"

    def get_name(self) -> str:
        return NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MLXQuantConfig:
        modules = config.get("modules")
        if not isinstance(modules, dict):
            raise ValueError(
                "quantization_config for --quantization mlx has no 'modules': the vllm-mlx-loader plugin writes it "
                "when it is installed and the model is an MLX checkpoint (--load-format mlx-4bit)"
            )
        experts = config.get("experts") or {}
        return cls({name: {**entry, "source": name} for name, entry in modules.items()}, bool(config.get("tied")),
                   {name: {**entry, "source": name} for name, entry in experts.items()})

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:
        """Key the entries by vLLM's module names where the model renames Hugging Face's (e.g. a language model
        nested in a vision-language class); each keeps its HF name for the loader."""
        def rename(entries: dict[str, dict[str, Any]], suffix: str) -> dict[str, dict[str, Any]]:
            renamed = {}
            for name, entry in entries.items():
                mapped = hf_to_vllm_mapper.apply_list([f"{name}{suffix}"])
                if mapped:
                    renamed[mapped[0].removesuffix(suffix)] = entry
            return renamed

        self.modules = rename(self.modules, ".weight")
        self.experts = rename(self.experts, ".0.weight")  # as an expert's weight is named

    def kernel(self) -> Any:
        if self._kernel is None:
            from .int4_backends import platform_kernel

            self._kernel = platform_kernel()
        return self._kernel

    def parts(self, prefix: str) -> list[str]:
        """The checkpoint modules vLLM's layer `prefix` is made of (several for a fused layer)."""
        parent, _, last = prefix.rpartition(".")
        subs = self.packed_modules_mapping.get(last)
        if not subs:
            return [prefix]
        return [f"{parent}.{sub}" if parent else sub for sub in subs]

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Any:
        from .linear_method import MLXLinearMethod, TiedHeadMethod

        embedding = isinstance(layer, VocabParallelEmbedding)
        if hasattr(layer, "moe_config"):
            return self.experts_method(layer, prefix)
        if not (embedding or isinstance(layer, LinearBase)):
            return None
        if isinstance(layer, ParallelLMHead) and prefix not in self.modules:
            return TiedHeadMethod(self.embeddings) if self.tied and self.embeddings else None
        entries = [self.modules.get(part) for part in self.parts(prefix)]
        if any(entry is None for entry in entries):
            return None if embedding else unquantized("unquantized in the checkpoint")
        kinds = {(e["mode"], e["bits"], e["group_size"]) for e in entries}
        if len(kinds) > 1:
            return unquantized("parts of a fused layer quantized differently")
        mode, bits, group_size = kinds.pop()
        if mode != "affine" or bits != 4:
            reason = stored_as(mode, bits)
            return None if embedding else unquantized(reason)
        sources = [e["source"] for e in entries]
        lookup = embedding and not isinstance(layer, ParallelLMHead)  # an embedding proper: rows looked up
        return MLXLinearMethod(self.kernel(), group_size, sources, embedding, self.embeddings if lookup else None)

    def experts_method(self, layer: torch.nn.Module, prefix: str) -> Any:
        """Experts kept 4-bit where every one is 4-bit affine with one group size and the layer computes what the
        expert-by-expert path does; else vLLM's unquantized method (the plugin's BF16 path) with the reason."""
        from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod

        from .moe_method import MLXMoEMethod, refusal

        entry = self.experts.get(prefix)
        if entry is None:
            reason = "not stored as 4-bit expert stacks"
        elif entry["mode"] != "affine" or entry["bits"] != 4:
            reason = stored_as(entry["mode"], entry["bits"])
        else:
            reason = refusal(self.kernel(), layer, entry["group_size"])
        if reason is None:
            sources = [f"{entry['source']}.{e}.{proj}" for e in range(entry["count"]) for proj in entry["projections"]]
            return MLXMoEMethod(layer.moe_config, self.kernel(), entry["group_size"], sources, prefix)
        method = UnquantizedFusedMoEMethod(layer.moe_config)
        method.mlx_reason = reason
        return method


def register() -> None:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    if NAME not in QUANTIZATION_METHODS:
        register_quantization_config(NAME)(MLXQuantConfig)
