"""Output buffers are reused only after the consumer let go of every view of them."""

from __future__ import annotations

import torch

from vllm_mlx_loader.buffers import OutputBuffers
from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.weights import iter_dense_weights


def test_a_buffer_comes_back_only_when_nothing_references_it() -> None:
    pool = OutputBuffers(capacity=4096, slots=2)
    a = pool.empty((16, 8), torch.float32)
    view = a[3:5]  # a consumer keeping a view keeps the memory busy
    del a
    b = pool.empty((16, 8), torch.float32)
    c = pool.empty((4,), torch.bfloat16)  # both slots busy: fresh memory
    assert len({view.untyped_storage().data_ptr(), b.untyped_storage().data_ptr(), c.data_ptr()}) == 3
    assert pool.reused == 0
    held = view.untyped_storage().data_ptr()
    del view
    d = pool.empty((2, 3), torch.bfloat16)
    assert d.untyped_storage().data_ptr() == held and pool.reused == 1
    big = pool.empty((2048,), torch.float32)  # over capacity: its own memory, never pooled
    assert big.untyped_storage().nbytes() == 8192


def test_weights_kept_by_the_consumer_are_never_overwritten(checkpoints) -> None:
    ckpt = read_checkpoint(checkpoints["q4g64"])
    kept = dict(iter_dense_weights(ckpt, "cpu"))  # holds every tensor: no buffer may be handed out twice
    for name, tensor in iter_dense_weights(ckpt, "cpu"):  # drops each one: buffers are reused
        assert torch.equal(kept[name], tensor), name
    ptrs = [t.untyped_storage().data_ptr() for t in kept.values()]
    assert len(set(ptrs)) == len(ptrs)


def test_a_streaming_consumer_reuses_buffers(checkpoints, monkeypatch) -> None:
    pools = []
    original = OutputBuffers.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        pools.append(self)

    monkeypatch.setattr(OutputBuffers, "__init__", spy)
    ckpt = read_checkpoint(checkpoints["q4g64"])
    count = sum(1 for _ in iter_dense_weights(ckpt, "cpu"))
    assert count == len(ckpt.weights) and pools[0].reused > len(ckpt.quantized) // 2
