"""Training-free proxies for mixed-precision quantization: the proxy language, vectorised scoring, known proxies.

    from proxylab.proxy import parse_proxy, score_configs, KNOWN_PROXIES
    p = parse_proxy("mean_layers(smul(mean(softmax(abslog(bV))), mean(sqrt(relu(bW)))))")
    table = p.layer_table(stats)            # [L, n_bits], raises InvalidProxy(layer, op, reason)
    scores = score_configs(p, stats, bits)  # [N] for bits [N, L]
"""
from proxylab.proxy.core import BaseProxy, Proxy, parse_proxy, score_configs, validate
from proxylab.proxy.errors import InvalidProxy
from proxylab.proxy.evaluate import bits_to_columns, scores_from_table
from proxylab.proxy.inputs import PreparedStats, prepare
from proxylab.proxy.known import KNOWN_PROXIES, OMPQ
from proxylab.proxy.language import PSET, P, ProxyFitness, ProxyTree, S, T, describe_primitives
from proxylab.proxy.sampling import emq_graph, emq_linear, emq_tree, random_emq, random_formula

__all__ = [
    "BaseProxy", "Proxy", "parse_proxy", "score_configs", "validate", "InvalidProxy", "bits_to_columns",
    "scores_from_table", "PreparedStats", "prepare", "KNOWN_PROXIES", "OMPQ", "PSET", "T", "S", "P",
    "ProxyFitness", "ProxyTree", "describe_primitives", "emq_tree", "emq_linear", "emq_graph", "random_emq",
    "random_formula",
]
