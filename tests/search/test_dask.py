import pytest

from proxylab.search import ProxySearch

distributed = pytest.importorskip("distributed")
KW = dict(space="emq", pop=8, iters=12, seed=3)


def same_run(a, b):
    assert a.history_ == b.history_
    assert a.hall_of_fame_ == b.hall_of_fame_
    assert a.rejections_ == b.rejections_ and a.counters_ == b.counters_


def test_dask_threads_cluster_gives_the_local_result(tiny_pair):
    (ta, sa), (tb, sb) = tiny_pair
    local = ProxySearch(**KW).fit([ta, tb], [sa, sb])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        same_run(ProxySearch(**KW, scheduler=c.scheduler_address).fit([ta, tb], [sa, sb]), local)


@pytest.mark.slow
def test_dask_process_workers_give_the_local_result(tiny_pair):
    """Process workers: the evaluator (statistics included) is pickled to them."""
    (ta, sa), (tb, sb) = tiny_pair
    local = ProxySearch(**KW).fit([ta, tb], [sa, sb])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        same_run(ProxySearch(**KW, scheduler=c.scheduler_address).fit([ta, tb], [sa, sb]), local)


def test_unreachable_scheduler_is_a_clear_error(tiny, monkeypatch):
    from proxylab.errors import ProxylabError
    from proxylab.search import dispatch

    monkeypatch.setattr(dispatch, "CONNECT_TIMEOUT", "1s")
    t, s = tiny
    with pytest.raises(ProxylabError, match="Dask scheduler"):
        ProxySearch(pop=4, iters=1, scheduler="tcp://127.0.0.1:1").fit([t], [s])
