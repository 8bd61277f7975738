"""Malformed and hostile checkpoints: each row of the README's table is one case here, asserted by its message.

Every case starts from a real `mlx_lm.convert` output (4-bit g64) copied to a temporary directory, breaks
one thing byte by byte or tensor by tensor, and loads it the way the loader does (read the description,
then stream every dense tensor). It must raise MLXCheckpointError with a message naming the file, the
tensor, expected vs found, or load correctly where the README says the input is ignored by design.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors import safe_open
from safetensors.torch import save_file

from vllm_mlx_loader.errors import MLXCheckpointError
from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.weights import iter_dense_weights

SHARD = "model.safetensors"
Q = "model.layers.1.mlp.up_proj"  # the module most cases break


def load_all(path: Path) -> int:
    """What the loader does: describe, then stream every dense tensor. Returns the tensor count."""
    return sum(1 for _ in iter_dense_weights(read_checkpoint(path), "cpu"))


# --- ways to break a checkpoint -------------------------------------------------------------------


def edit_config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        edit(config)
        (path / "config.json").write_text(json.dumps(config))

    return apply


def edit_tensors(edit: Callable[[dict], None], shard: str = SHARD) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with safe_open(path / shard, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        edit(tensors)
        save_file(tensors, path / shard, metadata={"format": "mlx"})

    return apply


def edit_bytes(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        (path / SHARD).write_bytes(edit((path / SHARD).read_bytes()))

    return apply


def edit_header(edit: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        edit(header)
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw + data[8 + n :]

    return apply


def overwrite_header(data: bytes, text: bytes) -> bytes:
    """Replace the header's bytes with `text`, padded to the same length."""
    (n,) = struct.unpack("<Q", data[:8])
    return data[:8] + text.ljust(n) + data[8 + n :]


def set_offsets(name: str, offsets: Callable[[dict], list[int]]) -> Callable[[dict], None]:
    def apply(header: dict) -> None:
        header[name]["data_offsets"] = offsets(header)

    return apply


def pop(*names: str) -> Callable[[dict], None]:
    return lambda t: [t.pop(n) for n in names]


def poison(name: str, value: float) -> Callable[[dict], None]:
    def apply(t: dict) -> None:
        t[name] = t[name].clone()
        t[name][0, 0] = value

    return apply


def split_duplicate(path: Path) -> None:
    with safe_open(path / SHARD, framework="pt") as f:
        tensor = f.get_tensor(f"{Q}.scales")
    save_file({f"{Q}.scales": tensor * 2}, path / "model-extra.safetensors", metadata={"format": "mlx"})


def stale_index(weight_map: dict) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        index = json.loads((path / "model.safetensors.index.json").read_text())
        index["weight_map"].update(weight_map)
        (path / "model.safetensors.index.json").write_text(json.dumps(index))

    return apply


def link_outside(path: Path) -> None:
    outside = path.parent / "elsewhere.safetensors"
    shutil.move(path / SHARD, outside)
    os.symlink(outside, path / SHARD)


def hf_cache_layout(path: Path) -> None:
    """Hugging Face's cache: snapshots/<rev>/model.safetensors -> ../../blobs/<sha>. Must load."""
    blobs = path / "blobs"
    blobs.mkdir()
    snapshot = path / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    for item in list(path.iterdir()):
        if item.is_file():
            shutil.move(item, blobs / item.name)
            os.symlink(Path("..") / ".." / "blobs" / item.name, snapshot / item.name)


def link_config_to(target: str) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        (path / "config.json").unlink()
        os.symlink(target, path / "config.json")

    return apply


def config_fifo(path: Path) -> None:
    """A FIFO: opening it for reading waits for a writer that never comes."""
    (path / "config.json").unlink()
    os.mkfifo(path / "config.json")


def oversized_config(path: Path) -> None:
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(text + " " * (17 << 20))  # valid JSON, 17 MiB


def index_to_dev_zero(path: Path) -> None:
    """A linear missing, so the loader reads the index for its hint; the index is a link to /dev/zero."""
    edit_tensors(pop(*(f"{Q}.{x}" for x in ("weight", "scales", "biases"))))(path)
    (path / "model.safetensors.index.json").unlink(missing_ok=True)
    os.symlink("/dev/zero", path / "model.safetensors.index.json")


def empty(path: Path) -> None:
    for item in path.iterdir():
        item.unlink()


def only_config(path: Path) -> None:
    for item in path.glob("*.safetensors"):
        item.unlink()


def to_bf16_checkpoint(path: Path) -> None:
    src = REPO / ".cache" / "fixtures" / "_hf" / "untied"
    shutil.rmtree(path)
    shutil.copytree(src, path)


# --- the table ------------------------------------------------------------------------------------
# (id, what is broken, how, expected message or None where the README says "loads: ignored by design")
ROWS: list[tuple[str, str, Callable[[Path], None], str | None]] = [
    ("truncated-shard", "shard cut short", edit_bytes(lambda d: d[:-1000]),
     rf"{SHARD}: is not a readable safetensors file .*Re-download"),
    ("header-past-eof", "header length past the end of the file",
     edit_bytes(lambda d: struct.pack("<Q", len(d) + 100) + d[8:]), rf"{SHARD}: is not a readable safetensors file"),
    ("invalid-header-json", "header is not JSON",
     edit_bytes(lambda d: overwrite_header(d, b"{not json")),
     rf"{SHARD}: is not a readable safetensors file"),
    ("offsets-outside-file", "a tensor's data offsets point past the end of the data",
     edit_bytes(edit_header(set_offsets(f"{Q}.weight", lambda h: [0, 10**9]))), rf"{SHARD}: is not a readable safetensors"),
    ("offsets-overlapping", "two tensors' data overlap",
     edit_bytes(edit_header(set_offsets(f"{Q}.biases", lambda h: h[f"{Q}.scales"]["data_offsets"]))),
     rf"{SHARD}: is not a readable safetensors"),
    ("absurd-header-size", "header length 2**60", edit_bytes(lambda d: struct.pack("<Q", 2**60) + d[8:]),
     rf"{SHARD}: is not a readable safetensors file"),
    ("scales-u8", "affine scales stored as U8",
     edit_tensors(lambda t: t.update({f"{Q}.scales": t[f"{Q}.scales"].to(torch.uint8)})),
     rf"tensor '{Q}.scales': expected affine scales of dtype BF16/F16/F32, found U8\. U8 scales belong to the mxfp4"),
    ("weight-not-u32", "packed weight stored as I32",
     edit_tensors(lambda t: t.update({f"{Q}.weight": t[f"{Q}.weight"].view(torch.int32)})),
     rf"tensor '{Q}.weight': expected packed codes of dtype U32, found I32"),
    ("packed-columns-vs-bits", "config bits do not fit the packed columns",
     edit_config(lambda c: c["quantization"].update({Q: {"bits": 3, "group_size": 64}})),
     rf"tensor '{Q}.weight': expected 24 packed columns for 256 inputs at bits=3 \(group_size=64, 4 scale columns\), found 32"),
    ("scale-columns-vs-group-size", "scales have half the group columns",
     edit_tensors(lambda t: t.update({f"{Q}.{x}": t[f"{Q}.{x}"][:, :2].contiguous() for x in ("scales", "biases")})),
     rf"tensor '{Q}.weight': expected 16 packed columns for 128 inputs at bits=4 \(group_size=64, 2 scale columns\), found 32"),
    ("missing-biases", "a module without biases", edit_tensors(pop(f"{Q}.biases")),
     rf"tensor '{Q}.scales': is affine-quantized but {Q}.biases is missing"),
    ("missing-scales", "a module without scales", edit_tensors(pop(f"{Q}.scales")),
     rf"tensor '{Q}.biases': is present but {Q}.scales is missing"),
    ("u32-without-scales", "packed U32 weight with neither scales nor biases", edit_tensors(pop(f"{Q}.scales", f"{Q}.biases")),
     rf"tensor '{Q}.weight': holds packed U32 codes but {Q}.scales is missing"),
    ("config-bits-contradict-shapes", "config says 2-bit g128 for a 4-bit g64 checkpoint",
     edit_config(lambda c: c["quantization"].update(bits=2, group_size=128)),
     r"tensor 'lm_head.weight': expected dense shape \[1024, 256\] from config.json, found \[1024, 512\]\. .*"
     r"The shapes fit bits=4, group_size=64"),
    ("unknown-mode", "mode 'int4x'", edit_config(lambda c: c["quantization"].update(mode="int4x")),
     r"config.json quantization has unknown mode 'int4x' \(MLX modes: affine, mxfp4, mxfp8, nvfp4\)"),
    ("mode-contradicts-scales", "config.json says mxfp8 for affine tensors",
     edit_config(lambda c: c["quantization"].update(mode="mxfp8", group_size=None, bits=None)),
     r"tensor 'lm_head.scales': expected mxfp8 scales of dtype U8 \(E8M0 codes\), found BF16"),
    ("bad-bits", "bits 7", edit_config(lambda c: c["quantization"].update(bits=7)),
     r"config.json quantization has bits=7; MLX affine bits are \(1, 2, 3, 4, 5, 6, 8\)"),
    ("bad-module-entry", "a per-module entry that is neither an object nor false",
     edit_config(lambda c: c["quantization"].update({Q: 4})), rf"config.json quantization\['{Q}'\] must be an object or false, found 4"),
    ("module-marked-false", "config marks a quantized module unquantized",
     edit_config(lambda c: c["quantization"].update({Q: False})), rf"tensor '{Q}.scales': exists, but config.json quantization\['{Q}'\] is false"),
    ("nan-in-scales", "NaN in scales", edit_tensors(poison(f"{Q}.scales", float("nan"))),
     rf"tensor '{Q}.scales': holds 1 non-finite values \(NaN or Inf\) among 2048\. The checkpoint is damaged"),
    ("inf-in-biases", "Inf in biases", edit_tensors(poison(f"{Q}.biases", float("inf"))),
     rf"tensor '{Q}.biases': holds 1 non-finite values"),
    ("zero-size-tensor", "a tensor with zero elements",
     edit_tensors(lambda t: t.update({"model.norm.weight": torch.empty(0, dtype=torch.bfloat16)})),
     r"tensor 'model.norm.weight': has zero elements \(shape \[0\]\)"),
    ("duplicate-tensor", "the same tensor in two shards, different contents", split_duplicate,
     rf"model.safetensors: tensor '{Q}.scales' is also in model-extra.safetensors"),
    ("missing-shard", "a shard missing: the index names it, its tensors are absent",
     lambda p: (edit_tensors(pop(*(f"{Q}.{x}" for x in ("weight", "scales", "biases"))))(p),
                stale_index({f"{Q}.weight": "model-00002-of-00002.safetensors"})(p)),
     rf"the shards lack weights that Qwen3ForCausalLM needs: {Q}.weight\. model.safetensors.index.json names "
     r"model-00002-of-00002.safetensors, not in the directory"),
    ("index-names-absent-shard", "stale index naming a shard that does not exist (all tensors present)",
     stale_index({"lm_head.weight": "model-00007-of-00009.safetensors"}), None),
    ("index-path-traversal", "index names '../../etc/passwd' and an absolute path",
     stale_index({"lm_head.weight": "../../etc/passwd", "model.norm.weight": "/etc/shadow"}), None),
    ("symlink-outside", "shard is a symlink to a file outside the directory", link_outside,
     rf"{SHARD}: is a link to .*elsewhere.safetensors, outside the checkpoint directory"),
    ("hf-cache-symlinks", "Hugging Face cache layout (snapshot links into blobs/)", hf_cache_layout, None),
    ("unmapped-architecture", "model type without a mapping",
     edit_config(lambda c: c.update(model_type="falcon", architectures=["FalconForCausalLM"])),
     r"config.json: model type 'falcon' with architecture 'FalconForCausalLM' is refused: it has no MLX-to-vLLM "
     r"mapping"),
    ("model-type-mismatch", "a served architecture under another model type (mlx-lm chose its module by the type)",
     edit_config(lambda c: c.update(model_type="qwen3_next")),
     r"config.json: model type 'qwen3_next' with architecture 'Qwen3ForCausalLM' is refused: Qwen3ForCausalLM is "
     r"served for model type 'qwen3'; mlx-lm converts 'qwen3_next' with its 'qwen3_next' module"),
    ("stray-tensor", "a tensor the model does not have",
     edit_tensors(lambda t: t.update({"model.layers.7.input_layernorm.weight": torch.ones(256, dtype=torch.bfloat16)})),
     r"tensor 'model.layers.7.input_layernorm.weight': 'model.layers.7.input_layernorm.weight' is not a weight"),
    ("missing-linear", "a whole linear missing (vLLM 0.32 would load it silently)",
     edit_tensors(pop(*(f"{Q}.{x}" for x in ("weight", "scales", "biases")))),
     rf"the shards lack weights that Qwen3ForCausalLM needs: {Q}.weight"),
    ("missing-fused-part", "q_proj absent while k_proj and v_proj (its qkv_proj partners) are present",
     edit_tensors(pop(*(f"model.layers.0.self_attn.q_proj.{x}" for x in ("weight", "scales", "biases")))),
     r"the shards lack weights that Qwen3ForCausalLM needs: model.layers.0.self_attn.q_proj.weight"),
    ("plain-bf16-checkpoint", "a BF16 checkpoint given to the MLX loader", to_bf16_checkpoint,
     r"config.json: is not an MLX-quantized checkpoint: config.json has no 'quantization' entry"),
    ("other-quant-method", "an AWQ config", edit_config(lambda c: c["quantization_config"].update(quant_method="awq")),
     r"is not an MLX checkpoint: quantization_config.quant_method is 'awq'"),
    ("empty-directory", "an empty directory", empty, r": has no config.json\. Pass the MLX checkpoint's directory"),
    ("config-without-weights", "a config.json and no weights", only_config,
     r": has a config.json but no model\*.safetensors weight files"),
    ("only-adapter-weights", "only an `adapters.safetensors` (LoRA) beside config.json",
     lambda p: os.replace(p / SHARD, p / "adapters.safetensors"),
     r"no model\*.safetensors weight files \(found only adapters.safetensors, which mlx-lm does not load"),
    ("stray-adapters-file", "an `adapters.safetensors` beside the weights (mlx-lm ignores it too)",
     lambda p: shutil.copy(p / SHARD, p / "adapters.safetensors"), None),
    ("lone-quantization-config", "`quantization_config` without `quant_method` and no `quantization`",
     edit_config(lambda c: c.pop("quantization")),
     r"is not an MLX checkpoint: it has a 'quantization_config' without 'quant_method' but no 'quantization'"),
    ("config-not-json", "config.json is not JSON", lambda p: (p / "config.json").write_text("{oops"),
     r"config.json: is not valid JSON"),
    ("config-link-to-dev-zero", "config.json a link to /dev/zero (an endless file)", link_config_to("/dev/zero"),
     r"config.json: is a link to /dev/zero, outside the checkpoint directory"),
    ("config-fifo", "config.json a FIFO (reading it would wait for a writer forever)", config_fifo,
     r"config.json: is not a regular file \(a broken link, a directory, a FIFO or a device\)"),
    ("config-too-large", "config.json of 17 MiB", oversized_config, r"config.json: is larger than 16 MiB"),
    ("index-link-to-dev-zero", "a linear missing, and the index (read only for the hint) a link to /dev/zero",
     index_to_dev_zero, rf"the shards lack weights that Qwen3ForCausalLM needs: {Q}.weight\. The checkpoint is "
     "incomplete"),
    ("scales-without-quantization", "an MLX conversion holding scales, its config.json without `quantization`",
     edit_config(lambda c: [c.pop("quantization"), c.pop("quantization_config")]),
     r"tensor 'lm_head.scales': holds quantization scales, but config.json has no 'quantization' entry"),
    ("hostile-layer-count", "config.json claims 2**24 layers (transformers would fill a list per layer)",
     edit_config(lambda c: c.update(num_hidden_layers=2**24)),
     r"config.json: num_hidden_layers must be a positive integer of at most 256, found 16777216"),
    ("hostile-nesting", "config.json holds a list nested 900 deep (a recursive walk would overflow the stack)",
     edit_config(lambda c: c.update(extra=json.loads("[" * 900 + "]" * 900))),
     r"config.json: extra is nested 33 levels deep; configs nest a few"),
    ("hostile-list", "config.json holds a list of 2**20 entries",
     edit_config(lambda c: c.update(mlp_only_layers=[0] * 2**20)),
     r"config.json: mlp_only_layers has 1048576 entries; at most 4096 are expected"),
]


# The same, on the Qwen3-MoE fixture (experts stacked as `switch_mlp`, 8-bit router), 4 experts per layer.
E = "model.layers.0.mlp.switch_mlp"
MOE_ROWS: list[tuple[str, str, Callable[[Path], None], str | None]] = [
    ("expert-missing", "a stack holds 3 of the 4 experts (one expert's down_proj absent)",
     edit_tensors(lambda t: t.update({f"{E}.down_proj.{x}": t[f"{E}.down_proj.{x}"][:3].clone() for x in
                                      ("weight", "scales", "biases")})),
     r"the shards lack weights that Qwen3MoeForCausalLM needs: model.layers.0.mlp.experts.3.down_proj.weight"),
    ("extra-expert", "a stack holds 5 experts where config.json says 4",
     edit_tensors(lambda t: t.update({f"{E}.up_proj.{x}": torch.cat([t[f"{E}.up_proj.{x}"], t[f"{E}.up_proj.{x}"][:1]])
                                      for x in ("weight", "scales", "biases")})),
     rf"{E}.up_proj.weight' \[4\]: 'model.layers.0.mlp.experts.4.up_proj.weight' is not a weight of the model"),
    ("router-missing", "the router `mlp.gate` absent", edit_tensors(pop(*(f"model.layers.1.mlp.gate.{x}" for x in
                                                                           ("weight", "scales", "biases")))),
     r"lack weights that Qwen3MoeForCausalLM needs: model.layers.1.mlp.gate.weight"),
    ("hostile-expert-count", "config.json claims 2**24 experts",
     edit_config(lambda c: c.update(num_experts=2**24, num_local_experts=2**24)),
     r"config.json: num_experts must be a positive integer of at most 4096, found 16777216"),
    ("hostile-expert-matrices", "config.json claims 4096 experts in each of 48 layers",
     edit_config(lambda c: c.update(num_experts=4096, num_local_experts=4096, num_hidden_layers=48)),
     r"config.json: 48 mixture-of-experts layers of 4096 experts make 196608 expert matrices per projection; at "
     r"most 131072 are expected"),
    ("stack-flattened", "a stack stored 2-D ([experts x out, in])",
     edit_tensors(lambda t: t.update({f"{E}.gate_proj.{x}": t[f"{E}.gate_proj.{x}"].flatten(0, 1).clone() for x in
                                      ("weight", "scales", "biases")})),
     rf"tensor '{E}.gate_proj.weight': expected a stack of experts of shape \[experts, out, in\], found \[512, 128\]"),
]


def set_code(name: str, value: int, dtype: torch.dtype = torch.uint8) -> Callable[[dict], None]:
    """Set the first byte-sized code of tensor `name` (a scale code, or an mxfp8 element code) to `value`."""
    def apply(t: dict) -> None:
        t[name] = t[name].clone()
        t[name].view(torch.uint8).view(-1)[0] = value
    return apply


def add(name: str, tensor: torch.Tensor) -> Callable[[dict], None]:
    return lambda t: t.update({name: tensor})


# The float modes, each on the fixture of its mode (the untied Qwen3 converted with --q-mode).
FP_ROWS: list[tuple[str, str, Callable[[Path], None], str | None, str]] = [
    ("fp-scales-not-u8", "mxfp4 scales stored as BF16",
     edit_tensors(lambda t: t.update({f"{Q}.scales": t[f"{Q}.scales"].to(torch.bfloat16)})),
     rf"tensor '{Q}.scales': expected mxfp4 scales of dtype U8 \(E8M0 codes\), found BF16\. Float scales belong to "
     r"the affine mode", "mxfp4"),
    ("fp-stray-biases", "an mxfp4 module with biases",
     edit_tensors(lambda t: t.update({f"{Q}.biases": torch.zeros(512, 8, dtype=torch.bfloat16)})),
     rf"tensor '{Q}.biases': is present, but mxfp4 has no biases", "mxfp4"),
    ("fp-group-size-float", "mxfp4 with group_size 32.0 (a float) in config.json",
     edit_config(lambda c: c["quantization"].update(group_size=32.0)),
     r"config.json quantization has group_size=32.0, bits=4; MLX's mxfp4 has only group_size=32, bits=4 \(integers\)",
     "mxfp4"),
    ("fp-group-size", "mxfp4 with group_size 64 in config.json",
     edit_config(lambda c: c["quantization"].update(group_size=64)),
     r"config.json quantization has group_size=64, bits=4; MLX's mxfp4 has only group_size=32, bits=4", "mxfp4"),
    ("e8m0-scale-255", "an E8M0 scale code 255 (NaN by OCP, Inf in MLX)", edit_tensors(set_code(f"{Q}.scales", 255)),
     rf"tensor '{Q}.scales': holds 1 mxfp4 scale codes that decode to NaN or Inf", "mxfp4"),
    ("e4m3-nan-code", "an mxfp8 element code 0x7F (E4M3's NaN)", edit_tensors(set_code(f"{Q}.weight", 0x7F)),
     rf"tensor '{Q}.weight': holds 1 mxfp8 E4M3 codes that decode to NaN or Inf", "mxfp8"),
    ("e4m3-nan-scale", "an nvfp4 scale code 0xFF (E4M3's NaN)", edit_tensors(set_code(f"{Q}.scales", 0xFF)),
     rf"tensor '{Q}.scales': holds 1 nvfp4 scale codes that decode to NaN or Inf", "nvfp4"),
    ("global-scale-missing", "config.json says global_scale, the tensor is absent",
     edit_config(lambda c: c["quantization"].update({Q: {"group_size": 16, "bits": 4, "mode": "nvfp4",
                                                          "global_scale": True}})),
     rf"tensor '{Q}.scales': config.json says {Q} has a global scale, but {Q}.global_scale is missing", "nvfp4"),
    ("global-scale-zero", "an nvfp4 global scale of 0",
     edit_tensors(add(f"{Q}.global_scale", torch.tensor(0.0))),
     rf"tensor '{Q}.global_scale': holds 0.0 where non-zero float32 values belong", "nvfp4"),
    ("global-scale-non-finite", "an nvfp4 global scale of Inf",
     edit_tensors(add(f"{Q}.global_scale", torch.tensor(float("inf")))),
     rf"tensor '{Q}.global_scale': holds 1 non-finite values \(NaN or Inf\) among 1", "nvfp4"),
    ("global-scale-shape", "an nvfp4 global scale per row instead of one per matrix",
     edit_tensors(add(f"{Q}.global_scale", torch.ones(512))),
     rf"tensor '{Q}.global_scale': expected a float32 global scale of shape \[\] \(one value\), found F32 \[512\]",
     "nvfp4"),
    ("global-scale-not-nvfp4", "a global scale on an mxfp4 module",
     edit_tensors(add(f"{Q}.global_scale", torch.tensor(1.0))),
     rf"tensor '{Q}.global_scale': is a global scale, which only nvfp4 has, not mxfp4", "mxfp4"),
]


# Values a dtype cannot hold, each on the fixture of its mode, loaded in the dtype named (`--dtype`).
DTYPE_ROWS: list[tuple[str, str, Callable[[Path], None], str | None, str, torch.dtype]] = [
    ("e8m0-float16-overflow", "an mxfp4 scale code 143 (2^16), loaded in float16",
     edit_tensors(set_code(f"{Q}.scales", 143)),
     rf"tensor '{Q}.scales': dequantizes to \d+ values that float16 cannot hold \(Inf or NaN\) among \d+: its "
     r"scales are too large for that dtype\. float16 holds at most 65504: load it in bfloat16", "mxfp4", torch.float16),
    ("e8m0-overflow", "an mxfp4 scale code 254 (2^127): its group's elements (4 or 6 at most) overflow even float32",
     edit_tensors(set_code(f"{Q}.scales", 254)),
     rf"tensor '{Q}.scales': dequantizes to \d+ values that bfloat16 cannot hold \(Inf or NaN\).* The checkpoint is "
     "damaged", "mxfp4", torch.bfloat16),
    ("affine-float16-overflow", "an affine scale of 10^4 (its group's top code makes 1.5 x 10^5), loaded in float16",
     edit_tensors(poison(f"{Q}.scales", 1e4)),
     rf"tensor '{Q}.scales': dequantizes to \d+ values that float16 cannot hold \(Inf or NaN\)", "q4g64", torch.float16),
]


# Families whose conversion split a tensor: the parts must come together, each on its family's fixture.
G, K = "model.layers.0.mlp.experts", "model.layers.1.self_attn"
FAMILY_ROWS: list[tuple[str, str, Callable[[Path], None], str | None, str]] = [
    ("gpt-oss-lone-half", "gpt-oss: `gate_proj` without `up_proj` (mlx-lm's halves of `gate_up_proj`)",
     edit_tensors(pop(f"{G}.up_proj.weight", f"{G}.up_proj.scales")),
     rf"tensor '{G}.gate_proj.weight': has no {G}.up_proj.weight beside it: gate_proj and up_proj \(the halves of "
     r"gate_up_proj\) belong together", "gpt_oss"),
    ("gpt-oss-halves-differ", "gpt-oss: `up_proj` holds 3 experts, `gate_proj` 4",
     edit_tensors(lambda t: t.update({f"{G}.up_proj.{x}": t[f"{G}.up_proj.{x}"][:3].clone() for x in
                                      ("weight", "scales")})),
     rf"tensor '{G}.up_proj.weight': shape \[3, 128, 128\] does not pair with {G}.gate_proj.weight \[4, 128, 128\]",
     "gpt_oss"),
    ("mla-lone-half", "DeepSeek-V3: `embed_q` without `unembed_out` (mlx-lm's halves of `kv_b_proj`)",
     edit_tensors(pop(*(f"{K}.unembed_out.{x}" for x in ("weight", "scales", "biases")))),
     rf"tensor '{K}.embed_q.weight': has no {K}.unembed_out.weight beside it: the two halves of kv_b_proj belong",
     "deepseek_v3"),
]


@pytest.fixture
def checkpoint(checkpoints, tmp_path) -> Path:
    path = tmp_path / "model"
    shutil.copytree(checkpoints["q4g64"], path, ignore=shutil.ignore_patterns(".stamp"))
    return path


@pytest.mark.parametrize(("row", "what", "breaker", "message"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(row, what, breaker, message, checkpoint) -> None:
    breaker(checkpoint)
    path = checkpoint / "snapshots" / "rev" if row == "hf-cache-symlinks" else checkpoint
    if message is None:
        assert load_all(path) == 47  # loads, every tensor
        return
    with pytest.raises(MLXCheckpointError, match=message) as info:
        load_all(path)
    assert str(info.value).count("\n") == 0  # one message, one line


@pytest.mark.parametrize(("row", "what", "breaker", "message"), MOE_ROWS, ids=[r[0] for r in MOE_ROWS])
def test_bad_moe_input(row, what, breaker, message, checkpoints, tmp_path) -> None:
    path = tmp_path / "model"
    shutil.copytree(checkpoints["qwen3_moe"], path, ignore=shutil.ignore_patterns(".stamp"))
    breaker(path)
    with pytest.raises(MLXCheckpointError, match=message) as info:
        load_all(path)
    assert str(info.value).count("\n") == 0


@pytest.mark.parametrize(("row", "what", "breaker", "message", "fixture"), FP_ROWS + FAMILY_ROWS,
                         ids=[r[0] for r in FP_ROWS + FAMILY_ROWS])
def test_bad_input_of_a_mode_or_family(row, what, breaker, message, fixture, checkpoints, tmp_path) -> None:
    path = tmp_path / "model"
    shutil.copytree(checkpoints[fixture], path, ignore=shutil.ignore_patterns(".stamp"))
    breaker(path)
    with pytest.raises(MLXCheckpointError, match=message) as info:
        load_all(path)
    assert str(info.value).count("\n") == 0


@pytest.mark.parametrize(("row", "what", "breaker", "message", "fixture", "dtype"), DTYPE_ROWS,
                         ids=[r[0] for r in DTYPE_ROWS])
def test_bad_input_in_a_dtype(row, what, breaker, message, fixture, dtype, checkpoints, tmp_path) -> None:
    path = tmp_path / "model"
    shutil.copytree(checkpoints[fixture], path, ignore=shutil.ignore_patterns(".stamp"))
    breaker(path)
    ckpt = read_checkpoint(path)
    with pytest.raises(MLXCheckpointError, match=message) as info:
        for _ in iter_dense_weights(ckpt, "cpu", dtype):
            pass
    assert str(info.value).count("\n") == 0
    if dtype == torch.float16:  # bfloat16 holds what float16 cannot
        assert sum(1 for _ in iter_dense_weights(ckpt, "cpu", torch.bfloat16)) == len(ckpt.weights)


def readme_section() -> str:
    """The README's bad-input section (other tables there start rows the same way)."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Bad input never loads silently")
    return readme[start: readme.index("\n## ", start)]


def test_every_row_is_in_the_readme_table() -> None:
    table = re.findall(r"^\| `([a-z0-9-]+)` \|", readme_section(), flags=re.MULTILINE)
    assert table == [r[0] for r in ROWS + MOE_ROWS + FP_ROWS + DTYPE_ROWS + FAMILY_ROWS]
    assert len(ROWS) >= 25
