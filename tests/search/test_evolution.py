import numpy as np
import pytest
from scipy.stats import spearmanr

from proxylab.bench import BenchTable
from proxylab.errors import ProxylabError
from proxylab.proxy import parse_proxy, score_configs
from proxylab.search import ProxySearch
from proxylab.search.space import load_space
from proxylab.search.state import CHECKPOINT

SMALL = dict(pop=10, iters=30, seed=0)


def run(tables, stats, **kw):
    return ProxySearch(**{"space": "emq", **SMALL, **kw}).fit(tables, stats)


def test_same_seed_same_run_other_seed_other_run(tiny):
    t, s = tiny
    a, b, c = run([t], [s]), run([t], [s]), run([t], [s], seed=1)
    assert a.history_ == b.history_ and a.best_formula_ == b.best_formula_
    assert a.history_ != c.history_


def test_loop_invariants_and_bookkeeping(tiny):
    t, s = tiny
    ps = run([t], [s], iters=40)
    h = ps.history_
    assert [r["iteration"] for r in h] == list(range(41))
    best = [r["best_fitness"] for r in h]
    assert all(b2 >= b1 for b1, b2 in zip(best, best[1:]))  # only the worst ever leaves
    assert best[-1] > best[0]                                 # and the search improves on random
    assert all(r["unique"] == SMALL["pop"] for r in h)        # clones never enter
    c, rej = ps.counters_, ps.rejections_
    # every candidate ends in exactly one bucket
    assert c["candidates"] == c["cache_hits"] + c["equivalent_hits"] + c["evaluations"] + sum(rej["early"].values())
    assert rej["total"] == sum(rej["early"].values()) + sum(rej["full"].values()) > 0
    assert rej["early_share"] >= 0.9
    assert len(ps.population_) == SMALL["pop"]


def test_best_is_chosen_on_the_select_split(tiny):
    t, s = tiny
    ps = run([t], [s], hof_size=8)
    idx = t.split("select")
    select = [spearmanr(score_configs(parse_proxy(r["formula"]), s, t.bits[idx]), t.acc[idx]).statistic
              for r in ps.hall_of_fame_]
    assert [r["select_fitness"] for r in ps.hall_of_fame_] == pytest.approx(select, abs=1e-12)
    assert ps.best_formula_ == ps.hall_of_fame_[int(np.argmax(select))]["formula"]
    assert ps.best_proxy_.hash == parse_proxy(ps.best_formula_).hash


def test_search_finds_a_planted_proxy(tiny):
    """Accuracies replaced by a proxy of the space: the search must recover its ranking (test split)."""
    t, s = tiny
    planted = "mean_layers(mean(add(sqrt(abs(bG)), exp(neg(bW)))))"
    acc = score_configs(parse_proxy(planted), s, t.bits)
    cols = {"cfg_id": t.cfg_id, "bits": t.bits, "size_mb": t.size_mb, "bitops": t.bitops,
            "acc": acc, "acc_half_a": acc, "acc_half_b": acc}
    fake = BenchTable(cols, dict(t.meta, name="planted"))
    ps = run([fake], [s], pop=16, iters=60)
    idx = fake.split("test")
    rho = spearmanr(score_configs(ps.best_proxy_, s, fake.bits[idx]), acc[idx]).statistic
    start = ps.history_[0]["best_fitness"]
    assert rho > 0.97 and ps.hall_of_fame_[0]["search_fitness"] > start


def test_ablation_switches(tiny):
    t, s = tiny
    no_dps = run([t], [s], dps=False)
    full = run([t], [s])
    assert no_dps.counters_["candidates"] < full.counters_["candidates"]
    no_csp = run([t], [s], csp=False)
    assert set(no_csp.rejections_["early"]) <= {"too_big"}  # nothing screened before full evaluation
    assert no_csp.counters_["equivalent_hits"] == 0 and sum(no_csp.rejections_["full"].values()) > 0
    no_osp = run([t], [s], osp=False)
    assert no_osp.history_ != full.history_


def test_min_fitness_over_tables(tiny_pair):
    (ta, sa), (tb, sb) = tiny_pair
    ps = run([ta, tb], [sa, sb], fitness="min", iters=5)
    for r in ps.hall_of_fame_:
        assert r["search_fitness"] == pytest.approx(min(r["search_tiny-a"], r["search_tiny-b"]))


def test_space_that_allows_no_valid_tree_is_a_clear_error(tiny):
    t, s = tiny
    # every formula here is scale invariant in the bits (zscore / minmax of b*W), so constant over configs
    space = {"inputs": {"bW": 1}, "unary": {"zscore": 1, "minmax": 1}, "reduce": {"mean": 1},
             "aggregate": {"mean_layers": 1}, "structures": {"linear": {"unary_ops": 2}}}
    with pytest.raises(ProxylabError, match="allows no"):
        ProxySearch(space=space, pop=4, iters=1, max_init_samples=50).fit([t], [s])


def test_a_space_with_hessian_inputs_refuses_stats_without_the_hessian_before_searching(tiny, tmp_path):
    from proxylab.stats import NetworkStats

    t, s = tiny
    d = s.to_dict()
    d["scalars"] = {}
    bare = NetworkStats.from_dict(d)
    bare.extras.update(s.extras)
    with pytest.raises(ProxylabError, match=r"space 'extended' samples heig and htrace, but the statistics of "
                                            rf"{t.name} were computed without the Hessian"):
        ProxySearch(space="extended", **SMALL, out_dir=str(tmp_path / "run")).fit([t], [bare])
    assert not (tmp_path / "run" / CHECKPOINT).exists()  # refused before any evaluation was saved
    assert ProxySearch(space="emq", **SMALL).fit([t], [bare]).best_formula_  # no htrace / heig: searches fine


@pytest.mark.parametrize("kw, word", [({"pop": 1}, "pop"), ({"fitness": "max"}, "fitness"), ({"tries": 0}, "tries"),
                                      ({"space": "nope"}, "presets")])
def test_bad_arguments(tiny, kw, word):
    t, s = tiny
    with pytest.raises(ProxylabError, match=word):
        ProxySearch(**{**SMALL, **kw}).fit([t], [s])


def test_constructor_only_stores():
    ps = ProxySearch(space="does-not-exist", pop=-3)
    assert ps.space == "does-not-exist" and ps.pop == -3 and not hasattr(ps, "best_proxy_")
    assert load_space("emq").name == "emq"


@pytest.mark.parametrize("select_by, combine", [("min", min), ("mean", lambda v: float(np.mean(v)))])
def test_best_of_several_tables_is_picked_by_select_by(tiny_pair, select_by, combine):
    """The run's best is the hall-of-fame member whose select-split Spearman, combined over the tables by
    select_by (worst table or mean), is highest; oracle: scipy on each table's select rows."""
    (ta, sa), (tb, sb) = tiny_pair
    ps = run([ta, tb], [sa, sb], select_by=select_by, iters=10, hof_size=10)
    combined = []
    for r in ps.hall_of_fame_:
        per_table = []
        for t, s in ((ta, sa), (tb, sb)):
            idx = t.split("select")
            per_table.append(spearmanr(score_configs(parse_proxy(r["formula"]), s, t.bits[idx]), t.acc[idx]).statistic)
        combined.append(combine(per_table))
        assert r["select_fitness"] == pytest.approx(combined[-1], abs=1e-12)
    assert ps.best_formula_ == ps.hall_of_fame_[int(np.argmax(combined))]["formula"]


def test_bad_select_by(tiny):
    t, s = tiny
    with pytest.raises(ProxylabError, match="select_by"):
        ProxySearch(**SMALL, select_by="max").fit([t], [s])
