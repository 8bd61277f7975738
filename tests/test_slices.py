"""Tensor-parallel slices: a `LazyDense` weight reads and dequantizes only the region it is narrowed to, and
gives exactly the bytes of the same region of the whole dense tensor (vLLM at TP=2 is `test_engine.py`'s)."""

from __future__ import annotations

import pytest
import torch

from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.lazy_dense import LazyDense
from vllm_mlx_loader.weights import LoadStats, iter_dense_weights


def dense(ckpt) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in iter_dense_weights(ckpt, "cpu")}


def copy_of(lazy: torch.Tensor) -> torch.Tensor:
    """What a vLLM weight loader does with its narrowed tensor."""
    out = torch.empty(lazy.shape, dtype=lazy.dtype)
    out.copy_(lazy)
    return out


@pytest.mark.parametrize(
    "variant", ["q4g64", "q3g64", "mixed_3_6", "tied", "qwen2", "qwen3_moe", "mixtral", "mxfp4", "nvfp4", "mixed_modes"]
)
@pytest.mark.parametrize("dim", [0, 1])
def test_each_rank_gets_its_half_and_reads_half(variant, dim, checkpoints) -> None:
    ckpt = read_checkpoint(checkpoints[variant])
    whole = dense(ckpt)
    read, made = [], []
    for rank in (0, 1):
        stats = LoadStats()
        for name, lazy in iter_dense_weights(ckpt, "cpu", stats=stats, lazy=True):
            assert isinstance(lazy, LazyDense) and lazy.shape == whole[name].shape
            d = dim if lazy.dim() > dim else 0
            size = lazy.shape[d] // 2
            got = copy_of(lazy.narrow(d, rank * size, size))
            assert torch.equal(got, whole[name].narrow(d, rank * size, size)), (name, rank)
        read.append(stats.bytes_read)
        made.append(stats.bytes_dequantized)
    assert sum(read) == ckpt.nbytes  # every byte read once, by one of the two ranks
    full = sum(t.numel() * 2 for n, t in whole.items() if n in {w.name for w in ckpt.weights if w.quantized})
    assert made[0] == made[1] == full // 2


def test_columns_off_the_group_grid_fall_back_to_whole_groups(checkpoints) -> None:
    ckpt = read_checkpoint(checkpoints["q4g64"])  # group size 64
    name = "model.layers.0.mlp.down_proj.weight"  # [256, 512]
    whole = dense(ckpt)[name]
    stats = LoadStats()
    lazy = dict(iter_dense_weights(ckpt, "cpu", stats=stats, lazy=True))[name]
    assert torch.equal(copy_of(lazy.narrow(1, 100, 200)), whole[:, 100:300])
    assert stats.bytes_dequantized == whole.numel() * 2  # every group of the rows, then the columns
    assert torch.equal(copy_of(lazy.narrow(1, 128, 256).narrow(0, 10, 20)), whole[10:30, 128:384])
    assert stats.bytes_dequantized == whole.numel() * 2 + 20 * 256 * 2  # on the grid: only those groups


def test_lazy_dense_answers_metadata_without_reading_and_refuses_bad_narrows() -> None:
    full = torch.arange(24.0).reshape(4, 6)
    calls = []

    def make(region):
        calls.append(region)
        return full[tuple(slice(a, b) for a, b in region)].clone()

    lazy = LazyDense(make, (4, 6), torch.float32, torch.device("cpu"))
    assert (lazy.shape, lazy.dtype, lazy.device.type, lazy.dim(), lazy.numel(), lazy.size(1)) == (
        (4, 6), torch.float32, "cpu", 2, 24, 6)
    part = torch.narrow(lazy.narrow(0, 1, 3), 1, 2, 4).narrow(0, -2, 2)
    assert calls == [] and part.region == ((2, 4), (2, 6))
    assert torch.equal(part + 0, full[2:4, 2:6]) and calls == [((2, 4), (2, 6))]
    assert torch.equal(lazy.t(), full.t())  # any other op makes the tensor first
    for bad in ((0, 3, 2), (2, 0, 1), (1, 0, 7)):
        with pytest.raises(IndexError, match="is outside a tensor of shape"):
            lazy.narrow(*bad)


def test_a_weight_made_after_the_stream_ended_reopens_its_shard(checkpoints) -> None:
    ckpt = read_checkpoint(checkpoints["q4g64"])
    kept = dict(iter_dense_weights(ckpt, "cpu", lazy=True))  # the generator has closed its shards
    name = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(copy_of(kept[name]), dense(ckpt)[name])


@pytest.mark.parametrize("variant", ["q4g64", "mxfp4", "qwen3_moe", "qwen3_next", "deepseek_v3", "gpt_oss"])
def test_every_weight_is_lazy_and_a_weight_never_used_is_never_made(variant, checkpoints) -> None:
    """What a pipeline stage does: it takes the weights of its own layers and skips the rest. Every weight,
    restored ones (norms, `kv_b_proj`, gpt-oss's stacks) included, is a `LazyDense`; only the ones used are read,
    and they equal the eager stream's."""
    ckpt = read_checkpoint(checkpoints[variant])
    whole = dense(ckpt)
    stats = LoadStats()
    used = {w.name: w for w in ckpt.weights if w.name.startswith("model.layers.0.")}
    for name, lazy in iter_dense_weights(ckpt, "cpu", stats=stats, lazy=True):
        assert isinstance(lazy, LazyDense), name
        if name in used:
            assert torch.equal(copy_of(lazy), whole[name]), name
    # exactly the stored bytes of layer 0's weights: each expert's slice of a stack, each part of a split tensor
    want = sum(part.nbytes // (part.shape[0] if x.index is not None else 1)
               for w in used.values() for x in (w, *w.others) for part in getattr(x.source, "parts", (x.source,)))
    assert stats.bytes_read == want and 0 < want < ckpt.nbytes / 2


@pytest.mark.parametrize("variant", ["q4g64", "mxfp4", "qwen3_moe", "qwen3_next"])
def test_a_region_of_no_rows_or_columns_reads_nothing(variant, checkpoints) -> None:
    ckpt = read_checkpoint(checkpoints[variant])
    stats = LoadStats()
    for name, lazy in iter_dense_weights(ckpt, "cpu", stats=stats, lazy=True):
        for dim in range(lazy.dim()):
            empty = copy_of(lazy.narrow(dim, lazy.shape[dim] // 2, 0))
            assert empty.shape == (*lazy.shape[:dim], 0, *lazy.shape[dim + 1:]) and empty.dtype == lazy.dtype, name
    assert stats.bytes_read == 0 and stats.bytes_dequantized == 0


def test_an_in_place_op_on_a_lazy_weight_raises() -> None:
    """An in-place op would change a temporary made for it, silently lost: it raises instead."""
    full = torch.arange(24.0).reshape(4, 6)
    lazy = LazyDense(lambda r: full[tuple(slice(a, b) for a, b in r)].clone(), (4, 6), torch.float32,
                     torch.device("cpu"))
    for change in (lambda t: t.add_(1), lambda t: t.narrow(0, 1, 2).mul_(2), lambda t: t.__setitem__(0, 1.0),
                   lambda t: torch.add(full, 1, out=t), lambda t: t.copy_(full), lambda t: t.zero_()):
        with pytest.raises(RuntimeError, match="would write into a weight that is made on demand"):
            change(lazy)
    target = torch.empty(4, 6)
    target.copy_(lazy)  # copying *from* it is what weight loaders do
    assert torch.equal(target, full)
