"""One forward pass for measurement: eval mode, no gradients, hooks removed and the caller's mode restored."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn as nn


@contextmanager
def measuring(model: nn.Module, hooks: Iterable = ()) -> Iterator[None]:
    """``with measuring(model, handles): model(x)``: whatever happens inside, the hook handles are removed and
    the model goes back to the train/eval mode it had."""
    hooks = list(hooks)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
