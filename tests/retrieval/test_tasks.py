"""Tasks: class subsets in canonical space, seeded few-shot draws, queries disjoint from their scoring sets."""
import hashlib

import numpy as np
import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.retrieval.tasks import (NEW_TASKS, SOURCE_TASKS, SUBSET_TASKS, QuerySpec, Task, default_queries,
                                      get_task, list_tasks)


def _row_hashes(x: torch.Tensor) -> set:
    return {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x}


def test_registry_separates_source_and_new_tasks():
    assert set(SOURCE_TASKS).isdisjoint(NEW_TASKS)
    assert all(t.kind == "source" for t in SOURCE_TASKS.values())
    assert all(t.kind == "query" for t in NEW_TASKS.values())
    source_subsets = {(t.dataset, t.classes) for t in SOURCE_TASKS.values()}
    # a new task is never literally a source task under another name
    assert all((t.dataset, t.classes) not in source_subsets for t in NEW_TASKS.values())
    # within one data set the source tasks' classes do not overlap, so "trained on the query's task" is unambiguous
    by_dataset = {}
    for t in SOURCE_TASKS.values():
        classes = set(t.classes) if t.classes is not None else {"all"}
        assert by_dataset.setdefault(t.dataset, set()).isdisjoint(classes)
        by_dataset[t.dataset] |= classes
    families = {t.family for t in SOURCE_TASKS.values()}
    assert {"mnist5k", "animal", "digits", "shapes"} <= families
    assert sum(t.dataset.startswith("shapes") for t in SOURCE_TASKS.values()) >= 4
    assert len(list_tasks("all")) == len(SOURCE_TASKS) + len(NEW_TASKS) + len(SUBSET_TASKS)
    assert [t.name for t in list_tasks("same")] == list(SOURCE_TASKS)
    assert [t.name for t in list_tasks("subset")] == list(SUBSET_TASKS) == ["shapes-rgb"]


def _classes_of(task):
    return set(task.classes) if task.classes is not None else set(range(task.num_classes))


def test_no_new_task_is_a_class_subset_of_one_source_task():
    """A "new" task whose classes all belong to one source task (same images, same labelling) is not new: the
    source task's models were trained on it. Such tasks live in SUBSET_TASKS, with that source as parent."""
    for new in NEW_TASKS.values():
        for src in SOURCE_TASKS.values():
            if new.dataset == src.dataset:
                assert not _classes_of(new) <= _classes_of(src), (new.name, src.name)
    for sub in SUBSET_TASKS.values():
        parent = SOURCE_TASKS[sub.parent]
        assert sub.dataset == parent.dataset and _classes_of(sub) < _classes_of(parent) and sub.kind == "query"
        assert sub.name not in NEW_TASKS and sub.name not in SOURCE_TASKS
    assert get_task("shapes-rgb").parent == "shapes-color"


def test_task_data_is_the_canonical_class_subset():
    from proxylab.data import get_dataset
    from proxylab.retrieval.canonical import to_canonical

    task = get_task("digits-hi")
    x, y = task.data("test")
    ds = get_dataset("digits")
    keep = np.isin(ds.test.y.numpy(), [5, 6, 7, 8, 9])
    want_x = to_canonical(ds.test.x[torch.as_tensor(keep)], ds)
    want_y = ds.test.y[torch.as_tensor(keep)] - 5  # relabelled 0..4 in class order
    assert x.shape == (int(keep.sum()), 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(y, want_y)
    assert torch.allclose(x, want_x)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert task.class_names == ("5", "6", "7", "8", "9")
    assert task.family == "digits"


def test_limit_is_a_seeded_subset():
    task = get_task("digits-lo")
    x, y = task.data("train")
    a, ya = task.data("train", limit=40, seed=3)
    b, _ = task.data("train", limit=40, seed=3)
    c, _ = task.data("train", limit=40, seed=4)
    assert len(a) == 40 and torch.equal(a, b) and not torch.equal(a, c)
    assert _row_hashes(a) <= _row_hashes(x)


@pytest.mark.parametrize("n", [5, 20])
def test_sample_draws_n_per_class_deterministically(n):
    task = get_task("digits-odd")
    x, y = task.sample("train", n, seed=1)
    assert x.shape == (5 * n, 3, 32, 32)
    assert np.bincount(y.numpy(), minlength=5).tolist() == [n] * 5
    x2, y2 = task.sample("train", n, seed=1)
    x3, _ = task.sample("train", n, seed=2)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, x3)


def test_query_support_never_touches_the_scoring_set():
    task = get_task("digits-lo")
    (s0, sy0), (e0, ey0) = task.query(10, seed=0)
    (s1, _), (e1, _) = task.query(20, seed=1)
    assert torch.equal(e0, e1)  # the scoring set does not depend on the support's seed or size
    assert np.bincount(ey0.numpy()).tolist() == [25] * 5
    assert np.bincount(sy0.numpy()).tolist() == [10] * 5
    assert _row_hashes(s0).isdisjoint(_row_hashes(e0))
    assert _row_hashes(s1).isdisjoint(_row_hashes(e0))
    # every image comes from the task's test split
    assert (_row_hashes(s0) | _row_hashes(e0)) <= _row_hashes(task.data("test")[0])
    # sample() on the test split is the query's support
    xs, ys = task.sample("test", 10, seed=0)
    assert torch.equal(xs, s0) and torch.equal(ys, sy0)


def test_query_spec_key_kind_and_defaults():
    q = QuerySpec("mnist5k-lo", 5, 2)
    assert q.key == "mnist5k-lo.test.n5.s2" and q.kind == "same"
    assert QuerySpec("shapes-position").kind == "new"
    assert QuerySpec("shapes-rgb").kind == "subset"
    assert [q.task for q in default_queries("subset", n_per_class=(5,))] == ["shapes-rgb"]
    qs = default_queries("new", n_per_class=(5, 20), seeds=(0, 1))
    assert len(qs) == len(NEW_TASKS) * 4 and all(q.kind == "new" for q in qs)
    assert len({q.key for q in qs}) == len(qs)


def test_bad_requests_name_the_problem():
    task = get_task("digits-lo")
    with pytest.raises(ProxylabError, match="unknown task"):
        get_task("mnist-lo")
    with pytest.raises(ProxylabError, match="split"):
        task.sample("val", 5)
    with pytest.raises(ProxylabError, match="only .* test images"):
        task.query(30)  # digits has < 55 test images per class
    with pytest.raises(ProxylabError, match="5 to 20"):
        default_queries(n_per_class=(3,))
    with pytest.raises(ProxylabError, match="at least 2 classes"):
        Task("one", "digits", (3,))
    with pytest.raises(ProxylabError, match="n_per_class"):
        task.sample("train", 0)


def test_query_key_names_a_non_default_scoring_set_size():
    from proxylab.retrieval.tasks import QuerySpec

    default = QuerySpec("animal-odd", 10, 0, "test")
    other = QuerySpec("animal-odd", 10, 0, "test", n_eval_per_class=10)
    assert default.key == "animal-odd.test.n10.s0" and other.key != default.key  # the oracle cache must not mix them
