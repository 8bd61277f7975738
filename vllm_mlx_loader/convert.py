"""Convert an MLX checkpoint into a Hugging Face BF16 safetensors checkpoint, on any Linux box, without MLX.

    python -m vllm_mlx_loader.convert SRC DST [--dtype bfloat16] [--rounding fused|mlx_cpu] [--force]

Uses the loader's own reading, checks and dequantization, streaming one tensor at a time into the
output shards (--max-shard-size, 5 GB by default): host memory holds a few tensors, never a whole shard. Writes
`model-0000K-of-0000N.safetensors` shards, a `model.safetensors.index.json`, `config.json` without the
`quantization` and `quantization_config` keys, and copies every other regular file of SRC (tokenizer, chat
template, generation config); a link that leads out of SRC, a directory or a special file is not copied, and a
warning names it. Atomic: everything goes to a temporary directory beside DST, which is renamed into
place only when complete and re-read; on any failure (Ctrl-C included) nothing is left behind. SRC is only
read. DST is not overwritten without --force.

`--rounding mlx_cpu` gives the bytes `mlx_lm.convert -d` writes (two roundings in the scales' dtype);
the default `fused` rounds once from float32.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .dequant import ROUNDINGS
from .errors import MLXCheckpointError
from .files import copyable_files
from .format import MLXCheckpoint, read_checkpoint
from .shard_writer import SAFETENSORS_DTYPES, ShardWriter
from .shards import INDEX, read_headers
from .weights import iter_dense_weights

logger = logging.getLogger("vllm.mlx_loader")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
WEIGHT_FILES = (INDEX, "config.json")  # rewritten, not copied


def plan_shards(ckpt: MLXCheckpoint, dtype: torch.dtype, max_shard_bytes: int) -> list[list[tuple[str, tuple]]]:
    """Greedy split of the dense tensors, in checkpoint order, into shards of at most `max_shard_bytes`
    (one tensor may exceed it); each shard a list of `(name, shape)`."""
    shards: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for entry in ckpt.weights:
        nbytes = math.prod(entry.shape) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((entry.name, tuple(entry.shape)))
        size += nbytes
    return shards


def shard_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def hf_config(config: dict, dtype: str) -> dict:
    out = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    out["torch_dtype"] = dtype  # transformers 4.x reads torch_dtype, 5.x dtype
    out["dtype"] = dtype
    return out


def _check_destination(src: Path, dst: Path, force: bool) -> None:
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents or dst_r in src_r.parents:
        raise MLXCheckpointError(str(dst), f"overlaps the source {src}.", "Choose a destination outside it.")
    if dst.exists() and not force:
        raise MLXCheckpointError(
            str(dst), "already exists.", "Delete it, choose another path, or pass --force to replace it."
        )


def convert(
    src: str | Path, dst: str | Path, *, dtype: str = "bfloat16", rounding: str = "fused",
    max_shard_bytes: int = 5 * 10**9, force: bool = False, progress: bool = True,
) -> Path:
    """Write the dense Hugging Face checkpoint of MLX checkpoint `src` to `dst`; return `dst`."""
    src, dst = Path(src), Path(dst)
    if dtype not in DTYPES:
        raise MLXCheckpointError("--dtype", f"{dtype!r} is not one of {list(DTYPES)}.")
    if rounding not in ROUNDINGS:
        raise MLXCheckpointError("--rounding", f"{rounding!r} is not one of {list(ROUNDINGS)}.")
    ckpt = read_checkpoint(src)
    _check_destination(src, dst, force)
    torch_dtype = DTYPES[dtype]
    shards = plan_shards(ckpt, torch_dtype, max_shard_bytes)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    dense = iter_dense_weights(ckpt, "cpu", torch_dtype, rounding)
    try:
        weight_map, total = {}, 0
        bar = tqdm(total=len(ckpt.weights), desc="Converting MLX checkpoint", disable=not progress, unit="tensor")
        for i, layout in enumerate(shards):
            file = shard_name(i, len(shards))
            with ShardWriter(tmp / file, layout, torch_dtype) as writer:
                for _ in layout:  # the checkpoint's order is the shards' order
                    name, tensor = next(dense)
                    writer.write(name, tensor.to(torch_dtype))  # norms are stored BF16: cast them too
                    weight_map[name] = file
                    total += tensor.numel() * torch_dtype.itemsize
                    bar.update()
        bar.close()
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(hf_config(ckpt.config, dtype), indent=2) + "\n")
        copy, skipped = copyable_files(src, {p.name for p in src.glob("*.safetensors")} | set(WEIGHT_FILES))
        for path in copy:
            shutil.copy2(path, tmp / path.name)
        for reason in skipped:  # a link out of the checkpoint could carry any file into an output meant to be shared
            logger.warning("%s: not copied: %s", src, reason)
        verify(tmp, ckpt, weight_map, torch_dtype)
        _publish(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        dense.close()
    return dst


def verify(directory: Path, ckpt: MLXCheckpoint, weight_map: dict[str, str], dtype: torch.dtype) -> None:
    """Re-read every written shard's header: each weight once, where the index says, right shape and dtype."""
    found = read_headers(tuple(sorted(directory.glob("*.safetensors"))))
    want_dtype = SAFETENSORS_DTYPES[dtype]
    for entry in ckpt.weights:
        ref = found.pop(entry.name, None)
        got = None if ref is None else (ref.file.name, ref.dtype, ref.shape)
        expected = (weight_map[entry.name], want_dtype, tuple(entry.shape))
        if got != expected:
            raise MLXCheckpointError(
                str(directory), f"verification failed for {entry.name!r}: expected {expected}, found {got}."
            )
    if found:
        raise MLXCheckpointError(str(directory), f"verification found unexpected tensors {sorted(found)}.")


def _publish(tmp: Path, dst: Path) -> None:
    if not dst.exists():
        os.replace(tmp, dst)
        return
    # --force: move the old output aside first, so a failure never leaves DST missing both versions
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
    os.replace(dst, old / "previous")
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old / "previous", dst)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="MLX checkpoint directory (only read)")
    parser.add_argument("dst", type=Path, help="output directory (must not exist, unless --force)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--rounding", default="fused", choices=ROUNDINGS)
    parser.add_argument("--max-shard-size", type=float, default=5.0, help="GB per output shard (default 5)")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.dst, dtype=args.dtype, rounding=args.rounding,
                max_shard_bytes=int(args.max_shard_size * 1e9), force=args.force)
    except MLXCheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
