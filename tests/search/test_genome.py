import numpy as np
import pytest

from proxylab.proxy import parse_proxy
from proxylab.proxy.parse import parse_node
from proxylab.search.genome import Domain, Genome, GenomeSampler, formula_size
from proxylab.search.space import load_space


def count_nodes(node) -> int:
    return 1 + sum(count_nodes(c) for c in node.children)


@pytest.mark.parametrize("space", ["emq", "extended"])
def test_every_sampled_genome_compiles_to_a_well_typed_formula(space):
    sampler = GenomeSampler(load_space(space))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        g = sampler.sample(rng)
        f = sampler.formula(g)
        node = parse_node(f)  # raises on any typing error
        assert formula_size(f) == count_nodes(node)
        assert "noop" not in f and "none" not in f  # identities are stripped, so equal proxies print equal
        seen.add(g.structure)
    assert seen == set(load_space(space).structures)


def test_sampling_follows_operation_priority_and_no_osp_is_uniform():
    weights = load_space("emq").group("binary")
    rng = np.random.default_rng(1)
    d = Domain.of(weights)
    draws = np.bincount([d.draw(rng) for _ in range(20000)], minlength=4) / 20000
    expected = np.array([weights[k] for k in d.labels]) / sum(weights.values())
    assert np.allclose(draws, expected, atol=0.015)
    u = Domain.of(weights, uniform=True)
    draws = np.bincount([u.draw(rng) for _ in range(20000)], minlength=4) / 20000
    assert np.allclose(draws, 0.25, atol=0.015)


def test_osp_switch_changes_the_op_domains_only():
    space = load_space("emq")
    osp, flat = GenomeSampler(space, osp=True), GenomeSampler(space, osp=False)
    for name in space.structures:
        for slot, d1, d2 in zip(osp.templates[name].slot_names, osp.templates[name].domains, flat.templates[name].domains):
            if slot.startswith("in") or slot[0] in "xy" and slot[1:].isdigit():
                assert d1 == d2
            elif len(set(d1.probs)) > 1:
                assert len(set(np.round(d2.probs, 12))) == 1, slot


def test_tree_template_is_emqs_structure():
    sampler = GenomeSampler(load_space("emq"))
    t = sampler.templates["tree"]
    labels = {s: d.labels for s, d in zip(t.slot_names, t.domains)}
    genes = [labels["in_a"].index("bV"), labels["in_b"].index("bW"),
             labels["a0"].index("abslog"), labels["a1"].index("softmax"),
             labels["b0"].index("relu"), labels["b1"].index("sqrt"),
             labels["binary"].index("mul"), 0, 0]
    assert sampler.formula(Genome("tree", tuple(genes))) == \
        "mean_layers(mean(mul(softmax(abslog(bV)), sqrt(relu(bW)))))"


def test_crossover_takes_each_gene_from_a_parent_with_p_half():
    sampler = GenomeSampler(load_space("emq"))
    rng = np.random.default_rng(2)
    a = Genome("graph", tuple([0] * len(sampler.templates["graph"])))
    b = Genome("graph", tuple([1] * len(sampler.templates["graph"])))
    share = np.mean([np.mean(sampler.crossover(a, b, rng).genes) for _ in range(3000)])
    assert abs(share - 0.5) < 0.02
    lin = sampler.sample(np.random.default_rng(3))
    while lin.structure == "graph":
        lin = sampler.sample(rng)
    assert sampler.crossover(lin, a, rng) == lin  # different templates: the first parent is copied


def test_mutation_rates():
    sampler = GenomeSampler(load_space("emq"))
    rng = np.random.default_rng(4)
    g = Genome("tree", tuple([0] * len(sampler.templates["tree"])))
    changed_any, changed_unary = 0, []
    unary_slots = [i for i, s in enumerate(sampler.templates["tree"].slot_names) if s[0] in "ab" and s[1:].isdigit()]
    for _ in range(4000):
        m = sampler.mutate(g, rng)
        changed_any += m != g
        if m != g:
            changed_unary.append(np.mean([m.genes[i] != 0 for i in unary_slots]))
    # P(mutate) = 0.5; a mutated genome resamples each gene w.p. 0.5, and a resampled unary gene differs from
    # 'log' (index 0, weight 0.1 of 2.1) w.p. 1 - 0.1/2.1; the small chance that no gene changes is below 0.5^9
    assert abs(changed_any / 4000 - 0.5) < 0.03
    assert abs(np.mean(changed_unary) - 0.5 * (1 - 0.1 / 2.1)) < 0.03


def test_same_seed_same_genomes_and_checkpoint_roundtrip():
    sampler = GenomeSampler(load_space("extended"))
    a = [sampler.sample(np.random.default_rng(7)) for _ in range(1)]
    b = [sampler.sample(np.random.default_rng(7)) for _ in range(1)]
    assert a == b
    g = a[0]
    assert Genome.from_json(g.to_json()) == g
    sampler.check(g)
    with pytest.raises(ValueError):
        sampler.check(Genome(g.structure, g.genes + (0,)))


def test_extended_scalar_structure_reaches_bparams():
    sampler = GenomeSampler(load_space("extended"))
    t = sampler.templates["scalar"]
    lab = {s: d.labels for s, d in zip(t.slot_names, t.domains)}
    genes = (lab["s0"].index("bits"), lab["f0"].index("none"), lab["s1"].index("params"), lab["f1"].index("none"),
             lab["join"].index("smul"), lab["aggregate"].index("sum_layers"))
    f = sampler.formula(Genome("scalar", genes))
    assert parse_proxy(f).hash == parse_proxy("bparams").hash
