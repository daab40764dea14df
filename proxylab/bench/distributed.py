"""Spread a build's configurations over a Dask cluster (``--scheduler tcp://host:8786``).

The network recipe and weights are scattered to every worker once; tasks carry only a few (cfg_id, bits)
pairs, and each worker keeps the QuantizedNetwork it built (``measure.measurer_for``). Results stream back
as they finish and are written by the caller, so a build killed mid-way keeps every row already returned.
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

from proxylab.bench.measure import MeasureSpec, Result, measure_batch
from proxylab.errors import MissingDependencyError, ProxylabError


def _client(scheduler: Any, timeout: float):
    try:
        from dask.distributed import Client
    except ImportError:
        raise MissingDependencyError("dask[distributed]", "pip install 'proxylab[distributed]'",
                                     "--scheduler (building on a Dask cluster)") from None
    if isinstance(scheduler, Client):
        return scheduler, False
    try:
        return Client(scheduler, timeout=f"{timeout}s"), True
    except (OSError, TimeoutError) as e:
        raise ProxylabError(f"cannot reach the Dask scheduler at {scheduler} ({type(e).__name__}: {e}); "
                            "start one with `dask scheduler` and workers with `dask worker ADDRESS`") from None


def measure_on_cluster(scheduler: Any, spec: MeasureSpec, jobs: Sequence[Tuple[int, Tuple[int, ...]]],
                       record: Callable[[Result], None], chunk: int = 4, timeout: float = 20.0) -> None:
    from dask.distributed import as_completed

    if not jobs:
        return
    client, owned = _client(scheduler, timeout)
    try:
        spec_future = client.scatter(spec, broadcast=True)
        batches: List[list] = [list(jobs[i:i + chunk]) for i in range(0, len(jobs), max(1, chunk))]
        futures = [client.submit(measure_batch, spec_future, batch, pure=False) for batch in batches]
        for future in as_completed(futures):
            for result in future.result():
                record(result)
    finally:
        if owned:
            client.close()
