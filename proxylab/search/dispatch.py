"""Formula -> outcome, with every cache, screening count and equivalence hit booked in one place.

``Dispatcher.resolve`` is the only code that updates the search's caches and counters, and it always sees
candidates in the order the search drew them. The Dask variant only changes *where* the expensive part runs:
``prefetch`` evaluates a whole batch (offspring tries + newcomer tries of an iteration, or a chunk of the
initial population) on the cluster first, and ``resolve`` then books those results exactly as the local run
books its own, so local and distributed runs give identical histories.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

from proxylab.errors import MissingDependencyError, ProxylabError
from proxylab.search.evaluate import EARLY, FULL, FitnessEvaluator, Outcome, rejected, remote_evaluate
from proxylab.search.genome import formula_size
from proxylab.search.state import SearchState


class Dispatcher:
    def __init__(self, evaluator: FitnessEvaluator, state: SearchState, max_size: int):
        from proxylab.proxy import parse_proxy

        self.evaluator = evaluator
        self.state = state
        self.max_size = max_size
        self._parse_proxy = parse_proxy
        self._parsed: Dict[str, Tuple[object, str]] = {}

    # -- hooks the Dask variant overrides -----------------------------------------------------------------
    def prefetch(self, formulas: Iterable[str]) -> None:
        """Local evaluation is lazy: nothing to do ahead."""

    def close(self) -> None:
        pass

    # -- shared booking -----------------------------------------------------------------------------------
    def parse(self, formula: str):
        hit = self._parsed.get(formula)
        if hit is None:
            proxy = self._parse_proxy(formula)
            hit = self._parsed[formula] = (proxy, proxy.hash)
        return hit

    def _early_stage(self, proxy, key: str):
        return self.evaluator.early(proxy)

    def resolve(self, formula: str) -> Tuple[Outcome, Optional[str]]:
        st = self.state
        st.counters["candidates"] += 1
        if formula_size(formula) > self.max_size:
            st.reject(EARLY, "too_big")
            return rejected(EARLY, "too_big"), None
        proxy, key = self.parse(formula)
        cached = st.cache.get(key)
        if cached is not None:
            st.counters["cache_hits"] += 1
            return cached, key
        if self.evaluator.csp:
            early, first_table, probe_key = self._early_stage(proxy, key)
            if early is not None:
                st.reject(EARLY, early.reason)
                st.cache[key] = early
                return early, key
            same = st.equivalent.get(probe_key)
            if same is not None:
                st.counters["equivalent_hits"] += 1
                st.cache[key] = same
                return same, key
            out = self._finish(proxy, key, first_table, probe_key)
        else:
            out = self._finish(proxy, key, None, "")
        st.counters["evaluations"] += 1
        if not out.valid:
            st.reject(FULL, out.reason)
        st.cache[key] = out
        if out.probe_key:
            st.equivalent[out.probe_key] = out
        return out, key

    def _finish(self, proxy, key, first_table, probe_key) -> Outcome:
        if self.evaluator.csp:
            return self.evaluator.full(proxy, first_table, probe_key)
        return self.evaluator.full(proxy)


CONNECT_TIMEOUT = "20s"


class DaskDispatcher(Dispatcher):
    """Same booking; the evaluations of a batch run on a Dask cluster (the evaluator is scattered once)."""

    def __init__(self, evaluator: FitnessEvaluator, state: SearchState, max_size: int, address: str):
        super().__init__(evaluator, state, max_size)
        try:
            from distributed import Client
        except ImportError:
            raise MissingDependencyError("distributed", 'pip install "proxylab[distributed]"',
                                         "--scheduler (evaluating fitness on a Dask cluster)") from None
        try:
            self.client = Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as e:
            raise ProxylabError(f"cannot reach the Dask scheduler at {address!r} ({e}); start one with "
                                f"`dask scheduler` and `dask worker ADDRESS`, or leave --scheduler out") from None
        self._remote_ev = self.client.scatter(evaluator, broadcast=True)
        self._results: Dict[str, Outcome] = {}

    def prefetch(self, formulas: Iterable[str]) -> None:
        todo: Dict[str, str] = {}
        for f in formulas:
            if formula_size(f) > self.max_size:
                continue
            _, key = self.parse(f)
            if key not in self.state.cache and key not in self._results and key not in todo:
                todo[key] = f
        if not todo:
            return
        futures = self.client.map(remote_evaluate, [self._remote_ev] * len(todo), list(todo.values()), pure=False)
        for key, out in zip(todo, self.client.gather(futures)):
            self._results[key] = out

    def _early_stage(self, proxy, key: str):
        out = self._results.pop(key)
        if out.stage == EARLY:
            return out, None, ""
        self._pending = out
        return None, None, out.probe_key

    def _finish(self, proxy, key, first_table, probe_key) -> Outcome:
        if self.evaluator.csp:
            return self._pending
        return self._results.pop(key)

    def close(self) -> None:
        self.client.close()


def make_dispatcher(evaluator: FitnessEvaluator, state: SearchState, max_size: int,
                    scheduler: Optional[str] = None) -> Dispatcher:
    if scheduler:
        return DaskDispatcher(evaluator, state, max_size, scheduler)
    return Dispatcher(evaluator, state, max_size)
