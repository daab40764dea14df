"""Allocators that read real NetworkStats of a tiny network, checked against brute force over all configs."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from proxylab.allocate import (AllocationProblem, Budget, allocate, allocate_exhaustive, budget_between,
                               run_allocator)
from proxylab.errors import ProxylabError

BITS = (2, 3, 4)


@pytest.fixture(scope="module")
def stats():
    from proxylab.stats import compute_stats

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 5, (32,))
    return compute_stats(model, x, y, bit_choices=BITS, batch_size=16, hessian=True, hessian_probes=4,
                         hessian_iters=5)


def test_costs_agree_with_quant(stats):
    from proxylab.quant import bitops, size_mb

    problem = AllocationProblem.from_stats(stats)
    bits = np.array([[2, 3, 4], [4, 2, 2]])
    np.testing.assert_allclose(problem.size_mb(bits), size_mb(stats.params, bits))
    np.testing.assert_allclose(problem.bitops(bits), bitops(stats.macs, bits, 8))


@pytest.mark.parametrize("frac", [0.2, 0.5, 0.8])
def test_hawq_v2_minimises_trace_weighted_error(stats, frac):
    from proxylab.quant import quantize_weight

    problem = AllocationProblem.from_stats(stats)
    budget = budget_between(problem, frac)
    traces = np.array([stats.scalar(l, "hessian_trace") for l in range(3)]) / stats.params
    err = np.array([[float((stats.tensor(l, "weight") - quantize_weight(stats.tensor(l, "weight"), b)).pow(2).sum())
                     for b in BITS] for l in range(3)])

    def perturbation(bits):
        return -(traces[None, :] * err[np.arange(3)[None, :], np.asarray(bits) - 2]).sum(1)

    res = run_allocator("hawq_v2", problem, budget)
    brute = allocate_exhaustive(problem, perturbation, budget)
    assert perturbation(np.array([res.bits]))[0] == pytest.approx(brute.score, rel=1e-9)


def test_bit_choice_subset_and_unknown_bits(stats):
    problem = AllocationProblem.from_stats(stats, bit_choices=(4, 2))
    assert problem.bit_choices == (2, 4)
    res = run_allocator("hawq_v2", problem, budget_between(problem, 0.5))
    assert set(res.bits) <= {2, 4}
    with pytest.raises(ProxylabError, match=r"bit choice\(s\) \[8\] have no statistics"):
        AllocationProblem.from_stats(stats, bit_choices=(2, 8))


def test_allocate_api_accepts_budget_forms(stats):
    a = allocate(stats, {"size_mb": 0.0005}, allocator="bparams")
    b = allocate(stats, "size_mb=0.0005", allocator="bparams")
    c = allocate(stats, Budget(size_mb=0.0005), allocator="bparams")
    assert a.bits == b.bits == c.bits
    with pytest.raises(ProxylabError, match="infeasible"):
        allocate(stats, "size_mb=0.00001", allocator="uniform")


# --- allocation driven by a proxy of the language (oracle: score_configs over every configuration) ----------
FORMULAS = [
    "mean_layers(smul(mean(softmax(abslog(bV))), mean(sqrt(relu(bW)))))",
    "sum_layers(sneg(norm(Q)))",
    "min_layers(sneg(mean(abs(Q))))",
    "max_layers(std(bW))",
]


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("frac", [0.3, 0.7])
def test_proxylab_allocator_is_optimal_for_the_proxy(stats, formula, frac):
    from proxylab.proxy import parse_proxy, score_configs

    proxy = parse_proxy(formula)
    problem = AllocationProblem.from_stats(stats)
    budget = budget_between(problem, frac)
    res = run_allocator("proxylab", problem, budget, proxy=formula, seed=0)
    brute = allocate_exhaustive(problem, lambda b: score_configs(proxy, stats, b), budget)
    assert res.method == ("ilp" if proxy.decomposable else "evolution")
    assert problem.fits(np.array(res.bits), budget)
    assert res.score == pytest.approx(score_configs(proxy, stats, np.array([res.bits]))[0], rel=1e-9, abs=1e-12)
    assert res.score == pytest.approx(brute.score, rel=1e-9, abs=1e-12)
    assert res.extra["proxy"] == str(proxy)


def test_known_proxies_allocate(stats):
    from proxylab.proxy import KNOWN_PROXIES, score_configs, parse_proxy

    problem = AllocationProblem.from_stats(stats)
    budget = budget_between(problem, 0.5)
    for name in KNOWN_PROXIES.names():
        proxy = parse_proxy(name)
        try:
            proxy.layer_table(stats)
        except ProxylabError:
            continue  # a known proxy may be unable to score this tiny network; tested below
        res = run_allocator("proxylab", problem, budget, proxy=name)
        brute = allocate_exhaustive(problem, lambda b: score_configs(proxy, stats, b), budget)
        assert res.score == pytest.approx(brute.score, rel=1e-9, abs=1e-12), name


def _ompq_weights_by_hand(stats):
    """OMPQ's objective weights from scratch: linear CKA of centred Gram matrices, gamma, exp(-gamma), suffix means."""
    L = len(stats.layer_names)
    if "gram" in getattr(stats, "extras", {}):  # X X^T over the whole calibration batch, kept by compute_stats
        raw = [stats.gram(l).double().numpy() for l in range(L)]
    else:  # else the images whose outputs "act" kept
        acts = [stats.tensor(l, "act").double().numpy() for l in range(L)]
        n = min(a.shape[0] for a in acts)
        raw = [a[:n].reshape(n, -1) @ a[:n].reshape(n, -1).T for a in acts]
    grams = [k - k.mean(0)[None, :] - k.mean(1)[:, None] + k.mean() for k in raw]
    theta = []
    for i in range(L):
        gamma = sum((grams[i] * grams[j]).sum() / (np.linalg.norm(grams[i]) * np.linalg.norm(grams[j]))
                    for j in range(L) if j != i)
        theta.append(np.exp(-gamma))
    return np.array([np.mean(theta[i:]) for i in range(L)])


@pytest.mark.parametrize("frac", [0.3, 0.7])
def test_ompq_allocator_maximises_ompq_objective(stats, frac):
    from proxylab.allocate.baselines import ompq_layer_weights

    weights = _ompq_weights_by_hand(stats)
    np.testing.assert_allclose(ompq_layer_weights(stats), weights, rtol=1e-9)
    problem = AllocationProblem.from_stats(stats)
    budget = budget_between(problem, frac)
    res = run_allocator("ompq", problem, budget)
    brute = allocate_exhaustive(problem, lambda b: (np.asarray(b) * weights).sum(-1), budget)
    assert problem.fits(np.array(res.bits), budget)
    assert float((np.array(res.bits) * weights).sum()) == pytest.approx(brute.score, rel=1e-9)


def test_ompq_weights_are_suffix_means_not_raw_importance():
    """A layer whose own outputs are redundant but whose successors are not still gets their importance."""
    from proxylab.allocate.baselines import ompq_layer_weights

    class Fake:
        layer_names = ["a", "b", "c"]
        extras: dict = {}

        def tensor(self, l, key):
            g = torch.Generator().manual_seed(l)
            base = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
            # layers a and b share their features (redundant), c is independent of both
            return base + 0.01 * torch.randn(6, 5, generator=g) if l < 2 else torch.randn(6, 5, generator=g)

    w = ompq_layer_weights(Fake())
    hand = _ompq_weights_by_hand(Fake())
    np.testing.assert_allclose(w, hand, rtol=1e-9)
    assert w[2] > w[0]  # c is the least redundant layer, and the last weight is c's own importance


def test_proxy_errors(stats):
    problem = AllocationProblem.from_stats(stats)
    budget = budget_between(problem, 0.5)
    with pytest.raises(ProxylabError, match="unknown proxy 'nope'"):
        run_allocator("proxylab", problem, budget, proxy="nope")
    # 1 / (W - W) is inf on the first layer: the message says the proxy cannot score the network, and where
    with pytest.raises(ProxylabError, match="cannot score this network.*invert.*layer"):
        run_allocator("proxylab", problem, budget, proxy="mean_layers(mean(invert(sub(W, W))))")
