import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from proxylab.proxy import parse_proxy, score_configs
from proxylab.search.evaluate import FitnessEvaluator, equivalence_key, is_constant

GOOD = "mean_layers(mean(mul(softmax(abslog(bV)), sqrt(relu(bW)))))"
INVALID = "mean_layers(mean(invert(sub(bW, bW))))"      # 1/0 on the first layer
CONSTANT = "mean_layers(mean(abs(W)))"                    # no bit-dependent input


def oracle(formula, table, stats, split="search"):
    idx = table.split(split)
    return spearmanr(score_configs(parse_proxy(formula), stats, table.bits[idx]), table.acc[idx]).statistic


def test_fitness_is_spearman_on_the_search_split(tiny):
    table, stats = tiny
    ev = FitnessEvaluator.for_tables([table], [stats])
    out = ev.evaluate(parse_proxy(GOOD))
    assert out.valid and out.fitness == pytest.approx(oracle(GOOD, table, stats), abs=1e-12)
    sel = FitnessEvaluator.for_tables([table], [stats], split="select").evaluate(parse_proxy(GOOD))
    assert sel.fitness == pytest.approx(oracle(GOOD, table, stats, "select"), abs=1e-12)
    assert sel.fitness != out.fitness


@pytest.mark.parametrize("combine", ["mean", "min"])
def test_several_tables_combine_by_mean_or_min(tiny_pair, combine):
    (ta, sa), (tb, sb) = tiny_pair
    out = FitnessEvaluator.for_tables([ta, tb], [sa, sb], combine=combine).evaluate(parse_proxy(GOOD))
    rhos = [oracle(GOOD, ta, sa), oracle(GOOD, tb, sb)]
    assert out.per_table == pytest.approx(rhos, abs=1e-12)
    assert out.fitness == pytest.approx(np.mean(rhos) if combine == "mean" else min(rhos), abs=1e-12)


def test_screening_rejects_early_and_without_csp_only_after_full_evaluation(tiny_pair):
    (ta, sa), (tb, sb) = tiny_pair
    csp = FitnessEvaluator.for_tables([ta, tb], [sa, sb], csp=True)
    full = FitnessEvaluator.for_tables([ta, tb], [sa, sb], csp=False)
    for formula, reason in ((INVALID, "invalid"), (CONSTANT, "constant")):
        a, b = csp.evaluate(parse_proxy(formula)), full.evaluate(parse_proxy(formula))
        assert not a.valid and not b.valid and math.isnan(a.fitness)
        assert (a.stage, a.reason) == ("early", reason)
        assert (b.stage, b.reason) == ("full", reason)


def test_early_stage_stops_at_the_first_table(tiny_pair, monkeypatch):
    (ta, sa), (tb, sb) = tiny_pair
    ev = FitnessEvaluator.for_tables([ta, tb], [sa, sb])
    seen = []
    original = FitnessEvaluator._layer_table

    def spy(proxy, stats):
        seen.append(stats)
        return original(proxy, stats)

    monkeypatch.setattr(FitnessEvaluator, "_layer_table", staticmethod(spy))
    ev.evaluate(parse_proxy(INVALID))
    assert seen == [sa]
    seen.clear()
    ev.evaluate(parse_proxy(GOOD))
    assert seen == [sa, sb]


def test_equivalence_key_is_affine_invariant_and_discriminates(tiny):
    table, stats = tiny
    ev = FitnessEvaluator.for_tables([table], [stats])
    key = lambda f: ev.early(parse_proxy(f))[2]  # noqa: E731
    base = key("mean_layers(mean(bW))")
    assert base == key("sum_layers(mean(bW))")             # sum = L * mean
    assert base != key("mean_layers(mean(abs(bG)))")
    s = np.linspace(1, 2, 32)
    assert equivalence_key(s) == equivalence_key(3 * s + 7) != equivalence_key(s ** 2)


def test_constant_detection_tolerates_float_noise():
    s = np.full(20, 1.2345)
    assert is_constant(s) and is_constant(s * (1 + 1e-9 * np.arange(20)))
    assert not is_constant(s * (1 + 1e-4 * np.arange(20)))
    assert is_constant(np.array([1.0, np.nan, 2.0]))
