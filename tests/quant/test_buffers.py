"""Pooled activation buffers: reused across passes, never while still read, and invisible in the results."""
import pytest
import torch

from proxylab.quant import QuantizedNetwork
from proxylab.quant.buffers import BufferPool

from .test_network import CONFIGS, oracle, run
from .test_network import data, model  # noqa: F401  (the fixtures of test_network, reused as they are)


def test_pool_hands_back_the_same_memory_per_shape_and_format():
    pool = BufferPool()
    x = torch.randn(4, 3, 5, 5)
    a = pool.take(x)
    assert a.shape == x.shape and a.stride() == x.stride()
    pool.give(a)
    assert pool.take(x).data_ptr() == a.data_ptr()  # reused
    cl = x.contiguous(memory_format=torch.channels_last)
    b = pool.take(cl)
    assert b.data_ptr() != a.data_ptr() and b.is_contiguous(memory_format=torch.channels_last)
    assert pool.take(x[:, :, ::2]) is None  # a strided view: the caller allocates
    with torch.inference_mode():
        c = pool.take(x)
    assert c.is_inference() and not a.is_inference()


def test_pool_forgets_shapes_idle_for_too_many_passes():
    pool = BufferPool(max_idle_passes=2)
    big, small = torch.randn(8, 4), torch.randn(3, 4)
    pool.give(pool.take(big))
    pool.give(pool.take(small))
    pool.end_pass()
    for _ in range(2):  # only the small shape is used from now on
        pool.give(pool.take(small))
        pool.end_pass()
    assert pool.nbytes == small.numel() * 4
    pool.clear()
    assert pool.nbytes == 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_pooled_passes_equal_fresh_tensors_and_the_oracle(model, data, channels_last):
    calib, x = data
    qn = QuantizedNetwork(model, calib, channels_last=channels_last)
    for bits in CONFIGS + CONFIGS[::-1]:  # buffers reused across configurations and passes
        qn.apply(bits)
        pooled = qn.predict(x, batch_size=16)  # batches of 16, 16, 8: two shapes alternate
        with torch.enable_grad():  # autograd on: no buffer reuse, fresh tensors
            fresh = torch.cat([qn.model(qn._prep(x[s:s + 16])) for s in range(0, len(x), 16)]).detach()
        assert torch.equal(pooled, fresh)
        assert torch.equal(pooled, run(oracle(model, calib, bits), x))
    assert qn._lent == [] and qn._held == []  # everything is back in the pool after a pass


def test_only_layers_whose_copy_is_reused_hold_their_buffer(model, data):
    calib, x = data
    qn = QuantizedNetwork(model, calib, channels_last=False)
    # dw and short read the same tensor: dw's quantized copy is the one short reuses
    assert qn._share and qn._producers == {qn.layer_names.index("dw")}
    qn.apply(CONFIGS[1])
    qn.predict(x)
    # the pool holds at most two buffers of any shape (dw's held copy + the current layer's)
    assert max(len(v) for v in qn._pool._free.values()) <= 2
