import math

import numpy as np
from scipy.stats import kendalltau, spearmanr

from proxylab.proxy import KNOWN_PROXIES, parse_proxy, score_configs
from proxylab.search.report import best_known, results_table


def select_rho(proxy, table, stats):
    idx = table.split("select")
    try:
        s = score_configs(proxy, stats, table.bits[idx])
    except Exception:
        return -math.inf
    if np.ptp(s) == 0:
        return -math.inf
    return spearmanr(s, table.acc[idx]).statistic


def test_best_known_is_picked_on_the_select_split_never_the_test_split(tiny):
    table, stats = tiny
    name, value, scores = best_known([table], [stats])
    oracle = {n: select_rho(KNOWN_PROXIES.get(n), table, stats) for n in KNOWN_PROXIES.names()}
    assert name == max(oracle, key=oracle.get)
    assert abs(value - oracle[name]) < 1e-12


def test_results_rows_hold_test_split_metrics(tiny):
    table, stats = tiny
    proxy = parse_proxy("mean_layers(mean(mul(softmax(abslog(bV)), sqrt(relu(bW)))))")
    rows = results_table(proxy, [table], [stats])
    searched = [r for r in rows if r["role"] == "searched"][0]
    idx = table.split("test")
    s = score_configs(proxy, stats, table.bits[idx])
    assert abs(searched["spearman"] - spearmanr(s, table.acc[idx]).statistic) < 1e-12
    assert abs(searched["kendall"] - kendalltau(s, table.acc[idx]).statistic) < 1e-12
    assert len(rows) == 1 + len(KNOWN_PROXIES) and all(r["test_rows"] == len(idx) for r in rows)
