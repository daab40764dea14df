"""Every primitive, batched over the bit axis, against a plain numpy expression applied slice by slice."""
import numpy as np
import pytest
import torch

from proxylab.proxy import ops
from proxylab.proxy.language import BINARY_S, BINARY_T, REDUCE, UNARY_S, UNARY_T
from proxylab.proxy.naive import NAIVE_OPS


def _softmax0(x):
    if x.ndim == 0:
        return np.ones_like(x)
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _logsoftmax0(x):
    if x.ndim == 0:
        return np.zeros_like(x)
    m = x.max(axis=0, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=0, keepdims=True))


def _rows(x):
    return x.reshape(x.shape[0] if x.ndim else 1, -1)


NUMPY = {
    "log": lambda x: np.log(np.where(x > 0, x, 1.0)),
    "abslog": lambda x: np.log(np.where(x == 0, 1.0, np.abs(x))),
    "abs": np.abs,
    "pow2": lambda x: x**2,
    "exp": np.exp,
    "zscore": lambda x: (x - x.mean()) / (x.std(ddof=1) + 1e-9),
    "relu": lambda x: np.maximum(x, 0.0),
    "invert": lambda x: 1.0 / x,
    "frobenius": lambda x: np.sqrt((x**2).sum()),
    "normsum": lambda x: x.sum() / x.size,
    "l1": lambda x: np.abs(x).sum() / x.size,
    "softmax": _softmax0,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "logsoftmax": _logsoftmax0,
    "sqrt": lambda x: np.sqrt(np.maximum(x, 0.0)),
    "neg": lambda x: -x,
    "minmax": lambda x: (x - x.min()) / (x.max() - x.min() + 1e-9),
    "tomean": np.mean,
    "tostd": lambda x: x.std(ddof=1),
    "noop": lambda x: x,
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "matmul": lambda a, b: _rows(a) @ _rows(b).T,
    "mean": np.mean,
    "std": lambda x: x.std(ddof=1),
    "norm": lambda x: np.sqrt((x**2).sum()),
    "sadd": np.add,
    "ssub": np.subtract,
    "smul": np.multiply,
    "sdiv": np.divide,
    "sneg": np.negative,
    "slog": lambda x: np.log(np.where(x == 0, 1.0, np.abs(x))),
    "sabs": np.abs,
}
BATCHED = {**ops.UNARY_T, **ops.BINARY_T, **ops.REDUCE, **ops.BINARY_S, **ops.UNARY_S}
SHAPES = [(4, 3, 2, 2), (5, 7), (6,)]


def _batch(rng, shape, b=3):
    x = rng.normal(size=(b,) + shape)
    x.flat[::5] = 0.0  # exact zeros exercise log / abslog / sqrt guards
    return x


def _compare(out, expected):
    np.testing.assert_allclose(out.numpy(), np.asarray(expected), rtol=1e-10, atol=1e-12)


def test_every_primitive_has_both_definitions():
    names = set(UNARY_T) | set(BINARY_T) | set(REDUCE) | set(BINARY_S) | set(UNARY_S)
    assert names == set(BATCHED) == set(NUMPY) == set(NAIVE_OPS)


# std of one entry is NaN by definition (see test_invalid_by_definition), so no 0-d case for those
@pytest.mark.parametrize(
    "name,shape",
    [(n, s) for n in UNARY_T + REDUCE for s in SHAPES + [()] if not (s == () and n in ("zscore", "tostd", "std"))],
)
def test_unary_and_reduce(name, shape):
    rng = np.random.default_rng(hash((name, shape)) % 2**32)
    x = _batch(rng, shape)
    if name in ("invert",):
        x[x == 0] = 0.5
    out = BATCHED[name](torch.from_numpy(x))
    expected = np.stack([np.asarray(NUMPY[name](x[i])) for i in range(len(x))])
    _compare(out, expected)
    naive = np.stack([NAIVE_OPS[name](torch.from_numpy(np.asarray(x[i]))).numpy() for i in range(len(x))])
    np.testing.assert_allclose(naive, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", BINARY_T)
@pytest.mark.parametrize("shapes", [((4, 3, 2, 2), (4, 3, 2, 2)), ((5, 7), (7,)), ((4, 3, 2, 2), ()),
                                    ((3, 1), (1, 4))])
@pytest.mark.parametrize("shared", ["none", "left", "right"])
def test_binary_tensor(name, shapes, shared):
    rng = np.random.default_rng(7)
    sa, sb = shapes
    a = _batch(rng, sa, 1 if shared == "left" else 3)
    b = _batch(rng, sb, 1 if shared == "right" else 3)
    if name == "matmul" and _rows(a[0]).shape[1] != _rows(b[0]).shape[1]:
        with pytest.raises(ops.ShapeMismatch):
            BATCHED[name](torch.from_numpy(a), torch.from_numpy(b))
        return
    out = BATCHED[name](torch.from_numpy(a), torch.from_numpy(b))
    expected = np.stack([NUMPY[name](a[min(i, len(a) - 1)], b[min(i, len(b) - 1)]) for i in range(3)])
    _compare(out, expected)


def test_binary_shape_mismatch_is_reported():
    a = torch.zeros(3, 4, 5)
    b = torch.zeros(1, 6)
    with pytest.raises(ops.ShapeMismatch, match=r"\[4, 5\] and \[6\]"):
        ops.BINARY_T["add"](a, b)


@pytest.mark.parametrize("name", BINARY_S + UNARY_S)
def test_scalar_ops(name):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=3), rng.normal(size=1)
    args = (a, b) if name in BINARY_S else (a,)
    out = BATCHED[name](*[torch.from_numpy(v) for v in args])
    _compare(out, NUMPY[name](*args))


@pytest.mark.filterwarnings("ignore:std\\(\\)")
def test_invalid_by_definition():
    one = torch.tensor([[2.0], [3.0]])
    assert torch.isnan(ops.UNARY_T["tostd"](one)).all()  # std of a single entry
    assert torch.isinf(ops.UNARY_T["invert"](torch.tensor([[0.0, 1.0]]))).any()
    assert torch.isinf(ops.UNARY_T["exp"](torch.tensor([[1000.0]]))).all()
    assert torch.isinf(ops.BINARY_S["sdiv"](torch.tensor([1.0]), torch.tensor([0.0]))).all()


def test_huge_broadcast_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(ops, "MAX_ELEMENTS", 1000)
    col, row = torch.zeros(3, 100, 1), torch.zeros(1, 100)
    with pytest.raises(ops.ShapeMismatch, match="30000 values"):
        ops.BINARY_T["add"](col, row)
    with pytest.raises(ops.ShapeMismatch, match="values"):
        ops.BINARY_T["matmul"](torch.zeros(1, 50, 4), torch.zeros(3, 60, 4))
    assert ops.BINARY_T["add"](torch.zeros(3, 10, 1), torch.zeros(1, 10)).shape == (3, 10, 10)
