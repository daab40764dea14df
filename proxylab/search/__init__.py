"""Evolutionary search of training-free proxies (EMQ-style) against MQ-Bench tables.

``ProxySearch(space, pop, iters, seed, ...).fit(tables)`` evolves proxy formulas; the spaces are YAML presets
(``load_space('emq')``, ``load_space('extended')`` or a path). See proxylab/search/evolution.py for the loop.
"""
from proxylab.search.evolution import ProxySearch
from proxylab.search.genome import Genome, GenomeSampler
from proxylab.search.space import SearchSpace, list_spaces, load_space

__all__ = ["ProxySearch", "SearchSpace", "load_space", "list_spaces", "Genome", "GenomeSampler"]
