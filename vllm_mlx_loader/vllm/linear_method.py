"""The linear method of `--quantization mlx`: the checkpoint's 4-bit codes, scales and biases as parameters (so
vLLM's weight loaders shard them like any GPTQ layer), then laid out for the platform's int4 kernel.

Parameters as MLX stores them: `weight` `[N, K/8]` int32 (eight codes per word along the input dimension),
`scales` and `biases` `[N, K/G]`; column-parallel layers shard all three along N, row-parallel ones along K (the
rank's K must hold whole groups). A layer the kernel cannot take (this rank's shape, the dtype) keeps the plugin's
BF16 path: the method then creates, loads and runs a dense layer, and the loader feeds it dense weights.

Embeddings and `lm_head` are such layers too (vLLM's `VocabParallelEmbedding` / `ParallelLMHead` take a linear
method): `lm_head` through the kernel, an embedding's rows dequantized on lookup from the kernel's layout
(`Int4Kernel.rows`). A tied `lm_head` (no lm_head in the checkpoint) is the embedding itself (`TiedHeadMethod`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import Parameter
from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase
from vllm.model_executor.layers.linear import LinearMethodBase, UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
from vllm.model_executor.utils import set_weight_attrs

from ..w4a16.kernel import Int4Kernel, check_layer

PACK = 8  # 4-bit codes per int32 word
PARTS = ("weight", "scales", "biases")


class MLXLinearMethod(LinearMethodBase):
    def __init__(
        self, kernel: Int4Kernel, group_size: int, sources: list[str], vocab: bool = False,
        embeddings: dict[int, torch.nn.Module] | None = None,
    ) -> None:
        self.kernel = kernel
        self.group_size = group_size
        self.sources = sources  # the checkpoint's (Hugging Face) module names this layer is made of
        self.is_embedding = vocab  # a VocabParallelEmbedding or ParallelLMHead (its BF16 path differs)
        self.embeddings = embeddings  # for an embedding that looks rows up: where a tied head finds it
        self.dense: LinearMethodBase | None = None  # the BF16 path, where the kernel cannot take the layer
        self.reason = ""
        self.dtype = torch.bfloat16

    @property
    def packed(self) -> bool:
        return self.dense is None

    def refusal(self, n: int, k: int, dtype: torch.dtype) -> str | None:
        if k % self.group_size:
            return f"this rank's {k} input columns are not whole groups of {self.group_size}"
        if self.embeddings is not None and not self.kernel.has_rows:
            return f"{self.kernel.name} has no row lookup for embeddings"
        return self.kernel.refusal(n, k, self.group_size, dtype)

    def create_weights(
        self, layer: torch.nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
        input_size: int, output_size: int, params_dtype: torch.dtype, **extra_weight_attrs: Any,
    ) -> None:
        n, k = sum(output_partition_sizes), input_size_per_partition
        self.dtype = params_dtype  # what an embedding's rows come out in
        reason = self.refusal(n, k, params_dtype)
        if reason is not None:
            self.dense = UnquantizedEmbeddingMethod() if self.is_embedding else UnquantizedLinearMethod()
            self.reason = reason
            self.dense.create_weights(layer, input_size_per_partition, output_partition_sizes, input_size,
                                      output_size, params_dtype, **extra_weight_attrs)
        else:
            self._create_packed(layer, n, k, params_dtype, extra_weight_attrs)
        if self.embeddings is not None:
            self.embeddings[id(layer.weight)] = layer

    def _create_packed(
        self, layer: torch.nn.Module, n: int, k: int, params_dtype: torch.dtype, extra_weight_attrs: dict[str, Any]
    ) -> None:
        groups = k // self.group_size
        weight = Parameter(torch.empty(n, k // PACK, dtype=torch.int32), requires_grad=False)
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0, "packed_dim": 1, "packed_factor": PACK})
        layer.register_parameter("weight", weight)
        set_weight_attrs(weight, extra_weight_attrs)
        for name in PARTS[1:]:
            param = Parameter(torch.empty(n, groups, dtype=params_dtype), requires_grad=False)
            set_weight_attrs(param, {"input_dim": 1, "output_dim": 0})
            layer.register_parameter(name, param)
            set_weight_attrs(param, extra_weight_attrs)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if self.dense is not None:
            self.dense.process_weights_after_loading(layer)
            return
        stored = [getattr(layer, name).data for name in PARTS]
        tensors = self.kernel.prepare(*stored, self.group_size)
        if self.kernel.self_check:
            check_layer(self.kernel, tensors, *stored, self.group_size, getattr(layer, "prefix", "") or self.sources[0])
        for name in PARTS:
            delattr(layer, name)
        for name, tensor in tensors.items():
            layer.register_parameter(name, Parameter(tensor, requires_grad=False))

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.dense is not None:
            return self.dense.apply(layer, x, bias)
        tensors = {name: getattr(layer, name) for name in PARTS}
        out = self.kernel.apply(tensors, x.reshape(-1, x.shape[-1]), self.group_size)
        out = out.reshape(*x.shape[:-1], out.shape[-1])
        return out if bias is None else out + bias

    def embedding(self, layer: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            return self.dense.embedding(layer, ids)
        tensors = {name: getattr(layer, name) for name in PARTS}
        flat = self.kernel.rows(tensors, ids.reshape(-1), self.group_size, self.dtype)
        return flat.reshape(*ids.shape, flat.shape[-1])


class TiedHeadMethod(LinearMethodBase):
    """A tied `lm_head` over a 4-bit embedding: it owns no weights and computes through the embedding's method.

    vLLM 0.32 asks the method to tie (`tie_weights`), and gets the embedding module back as the head; 0.18 and 0.23
    tie by sharing `weight` alone, so after loading the head finds its embedding by that shared parameter.
    """

    def __init__(self, embeddings: dict[int, torch.nn.Module]) -> None:
        self.embeddings = embeddings  # id(weight parameter) -> embedding module, filled as embeddings are made
        self.embed: torch.nn.Module | None = None

    def create_weights(self, layer: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        pass

    def tie_weights(self, layer: torch.nn.Module, embed_tokens: torch.nn.Module) -> torch.nn.Module:
        return embed_tokens

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        self.embed = self.embeddings[id(layer.weight)]

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed.quant_method.apply(self.embed, x, bias)


def decision_counts(model: torch.nn.Module) -> dict[str, int]:
    """How many layers took each path (`LLM.apply_model(decision_counts)` asks every worker)."""
    return decisions(model)[0]


def decisions(model: torch.nn.Module) -> tuple[dict[str, int], set[str]]:
    """(how many layers took each path, with its reason; the checkpoint modules the loader hands over packed)."""
    from .moe_method import MLXMoEMethod

    counts: dict[str, int] = {}
    packed: set[str] = set()
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, MLXLinearMethod):
            what = "embedding layer(s)" if method.is_embedding else "linear layer(s)"
            label = f"{what} 4-bit on {method.kernel.name}" if method.packed else f"{what} BF16 ({method.reason})"
            if method.packed:
                packed.update(method.sources)
        elif isinstance(method, MLXMoEMethod):
            label = f"MoE expert layer(s) 4-bit on {method.kernel.name}, expert by expert"
            packed.update(method.sources)
        elif isinstance(method, (UnquantizedLinearMethod, FusedMoEMethodBase)) and hasattr(method, "mlx_reason"):
            what = "MoE expert layer(s)" if isinstance(method, FusedMoEMethodBase) else "linear layer(s)"
            label = f"{what} BF16 ({method.mlx_reason})"
        else:
            continue
        counts[label] = counts.get(label, 0) + 1
    return counts, packed
