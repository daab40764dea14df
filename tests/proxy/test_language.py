"""The proxy language: printing, parsing, DEAP interop, canonical hashing and error messages."""
import pickle
import random

import pytest
from deap import gp

from proxylab.errors import ProxylabError
from proxylab.proxy import (
    KNOWN_PROXIES,
    PSET,
    Proxy,
    ProxyTree,
    describe_primitives,
    emq_graph,
    emq_linear,
    emq_tree,
    parse_proxy,
    random_formula,
)
from proxylab.proxy.language import SIGNATURES

EMQ = "mean_layers(smul(mean(softmax(abslog(bV))), mean(sqrt(relu(bW)))))"


def _random_proxies(n=300):
    makers = [random_formula, emq_tree, emq_linear, emq_graph]
    return [makers[i % 4](i) for i in range(n)]


def test_round_trip_over_random_trees():
    used = set()
    for p in _random_proxies():
        text = str(p)
        q = parse_proxy(text)
        assert str(q) == text and q.hash == p.hash
        assert str(p.tree) == text  # DEAP prints the same formula
        assert str(Proxy.from_tree(p.tree)) == text
        used |= set(text.replace("(", " ").replace(")", " ").replace(",", " ").split())
    assert used == set(SIGNATURES), f"never generated: {set(SIGNATURES) - used}"


def test_whitespace_is_free():
    messy = " mean_layers ( smul( mean(softmax(abslog( bV ))) ,mean(sqrt(relu(bW)))) ) "
    assert str(parse_proxy(messy)) == EMQ


def test_hash_is_canonical():
    a = parse_proxy("mean_layers(sadd(mean(bW), std(bA)))")
    b = parse_proxy("mean_layers(sadd(std(bA), mean(bW)))")
    c = parse_proxy("mean_layers(sadd(mean(noop(bW)), std(bA)))")
    d = parse_proxy("mean_layers(ssub(mean(bW), std(bA)))")
    e = parse_proxy("mean_layers(ssub(std(bA), mean(bW)))")
    f = parse_proxy("mean_layers(mean(add(mul(bW, W), bG)))")
    g = parse_proxy("mean_layers(mean(add(bG, mul(W, bW))))")
    assert a.hash == b.hash == c.hash and a == b
    assert d.hash != e.hash  # sub is not commutative
    assert f.hash == g.hash
    assert a.hash != d.hash
    assert len({p.hash for p in _random_proxies(100)}) > 80


def test_deap_interop_crossover_and_pickle():
    random.seed(0)
    a, b = emq_tree(1).tree, emq_graph(2).tree
    assert isinstance(a, ProxyTree) and a.fitness.weights == (1.0,)
    for _ in range(20):
        c1, c2 = gp.cxOnePoint(ProxyTree(a), ProxyTree(b))
        for child in (c1, c2):
            Proxy.from_tree(child)  # type-correct: re-parses without error
    mutant, = gp.mutNodeReplacement(ProxyTree(a), PSET)
    Proxy.from_tree(mutant)
    back = pickle.loads(pickle.dumps(a))
    assert str(back) == str(a)
    p = parse_proxy(EMQ)
    assert pickle.loads(pickle.dumps(p)) == p
    assert str(gp.PrimitiveTree.from_string(EMQ, PSET)) == EMQ


def test_emq_structures_are_expressible():
    tree = parse_proxy(EMQ)  # EMQ's published genotype
    linear = parse_proxy("mean_layers(mean(sigmoid(sqrt(abs(abslog(bG))))))")  # 1 input, 4 unary ops
    # graph: relu(bW) feeds two consumers; the evaluator computes it once
    graph = parse_proxy("mean_layers(mean(add(mul(relu(bW), abs(bG)), relu(bW))))")
    assert len([s for s in graph.program.steps if s.name == "relu"]) == 1
    for p, kind in ((tree, emq_tree), (linear, emq_linear), (graph, emq_graph)):
        assert p.aggregator == "mean_layers" and p.decomposable
    assert str(emq_tree(0)).startswith("mean_layers(s")


@pytest.mark.parametrize(
    "text,needle,pos",
    [
        ("mean_layers(mean(foo(bW)))", "unknown primitive 'foo'", 17),
        ("mean_layers(mul(mean(bW), mean(bA)))", "'mul' gives T (per-layer tensor) but argument 1 of 'mean_layers' needs S", 12),
        ("mean_layers(smul(mean(bW), bW))", "argument 2 of 'smul' needs S", 27),
        ("mean(bW)", "one aggregate over layers", 0),
        ("mean_layers(mean(bW)", "expected ')' closing 'mean_layers'", 20),
        ("mean_layers(mean(bW)))", "unexpected ')'", 21),
        ("mean_layers(mean(add(bW)))", "'add' takes 2 arguments, got 1", 23),
        ("mean_layers(mean(abs(bW, bA)))", "'abs' takes 1 argument, got more", 23),
        ("mean_layers(mean(bW(x)))", "is an input and takes no arguments", 19),
        ("mean_layers(mean(bW) $)", "but found '$'", 21),
        ("mean_layers(mean_layers(mean(bW)))", "gives P (network score)", 12),
    ],
)
def test_parse_errors_point_at_the_token(text, needle, pos):
    with pytest.raises(ProxylabError) as err:
        parse_proxy(text)
    msg = str(err.value)
    assert needle in msg
    assert f"(formula position {pos})" in msg
    caret_line = msg.splitlines()[-1]
    assert caret_line.index("^") - 2 == pos  # caret under the token


def test_scalar_twin_is_suggested():
    with pytest.raises(ProxylabError, match="use 'smul'"):
        parse_proxy("mean_layers(mul(mean(bW), mean(bA)))")


def test_empty_and_non_string():
    for bad in ("", "   ", None):
        with pytest.raises(ProxylabError, match="empty proxy formula"):
            parse_proxy(bad)


def test_known_names_parse_and_primitives_listed():
    for name in KNOWN_PROXIES:
        p = parse_proxy(name)
        assert parse_proxy(str(p)) == p
    rows = describe_primitives()
    assert {r["name"] for r in rows} == set(SIGNATURES)
    assert all(r["meaning"] for r in rows)
