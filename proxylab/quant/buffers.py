"""Reusable output tensors for the activation quantizer of ``QuantizedNetwork``.

On the CPU a fresh multi-megabyte tensor is paid for in page faults when first written (the allocator hands
big blocks back to the OS when they are freed). Measured on ResNet-20 with a batch of 500 28x28 images, one
elementwise pass into a fresh tensor took ~7x as long as the same pass into a tensor already touched, and
with ~20 quantized layer inputs per forward pass that decided how many configurations per minute a bench
build could score. A pool hands out tensors of the shapes one pass needs and gets them back when the reading
layer is done, so from the second pass on no quantized activation needs new memory.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

Key = Tuple[Tuple[int, ...], Tuple[int, ...], torch.dtype, torch.device, bool]


def _dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


class BufferPool:
    """Free tensors by (shape, strides, dtype, device, inference-ness).

    ``max_idle_passes``: a shape not asked for in that many passes is dropped (its memory freed), so a change
    of batch size does not keep the old buffers forever, while an evaluation that alternates two batch sizes
    (full batches, then a smaller last one) keeps both.
    """

    def __init__(self, max_idle_passes: int = 2):
        self.max_idle_passes = int(max_idle_passes)
        self._free: Dict[Key, List[torch.Tensor]] = {}
        self._last_used: Dict[Key, int] = {}
        self._pass = 0

    @staticmethod
    def _key(t: torch.Tensor, inference: bool) -> Key:
        return tuple(t.shape), tuple(t.stride()), t.dtype, t.device, inference

    def take(self, like: torch.Tensor) -> Optional[torch.Tensor]:
        """An uninitialised tensor with ``like``'s shape, strides, dtype and device; None when ``like`` is not
        dense (a strided view would make the buffer hold memory it never uses: the caller allocates instead).
        Tensors made inside inference mode are inference tensors, so the mode is part of the key."""
        if not _dense(like):
            return None
        key = self._key(like, torch.is_inference_mode_enabled())
        self._last_used[key] = self._pass
        free = self._free.get(key)
        if free:
            return free.pop()
        return torch.empty_strided(like.shape, like.stride(), dtype=like.dtype, device=like.device)

    def give(self, t: torch.Tensor) -> None:
        """Back to the pool: the caller guarantees nothing reads ``t`` any more."""
        self._free.setdefault(self._key(t, t.is_inference()), []).append(t)

    def end_pass(self) -> None:
        """Count one forward pass and drop the shapes idle for more than ``max_idle_passes`` passes."""
        self._pass += 1
        for key in [k for k, last in self._last_used.items() if self._pass - last > self.max_idle_passes]:
            del self._last_used[key]
            self._free.pop(key, None)

    def clear(self) -> None:
        self._free.clear()
        self._last_used.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held by free buffers."""
        return sum(t.numel() * t.element_size() for ts in self._free.values() for t in ts)
