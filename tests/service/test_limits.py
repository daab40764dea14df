"""Operator settings: limits must be finite and sane (inf used to pass, then break at start or in the watchdog's
thread), and the old probe_timeout argument still works, with a DeprecationWarning."""
import math
import warnings

import pytest

from proxylab.errors import ProxylabError
from proxylab.service.fetch import MAX_FETCH_BYTES, MAX_FETCH_SECONDS, FetchBudget
from proxylab.service.store import ZooStore
from tests.service.test_serve_command import make_index

NOT_SECONDS = [math.inf, -math.inf, math.nan, 0, -1, MAX_FETCH_SECONDS * 2, 1e300, True, "30"]


@pytest.mark.parametrize("seconds", NOT_SECONDS)
def test_a_budget_must_be_finite_positive_and_capped(seconds):
    with pytest.raises(ProxylabError, match="positive, finite number of seconds"):
        FetchBudget(seconds)


def test_the_largest_budget_still_runs_its_watchdog():
    from proxylab.service.fetch import _Watchdog

    watch = _Watchdog(FetchBudget(MAX_FETCH_SECONDS).seconds)  # threading.Timer dies above ~9.2e9 s
    try:
        assert watch._timer.is_alive()
    finally:
        watch.cancel()


@pytest.mark.parametrize("kwargs, words", [({"fetch_seconds": math.inf}, "fetch_seconds must be"),
                                           ({"fetch_seconds": math.nan}, "fetch_seconds must be"),
                                           ({"fetch_max_bytes": MAX_FETCH_BYTES + 1}, "fetch_max_bytes must be"),
                                           ({"fetch_max_bytes": 1.5}, "fetch_max_bytes must be")])
def test_the_store_refuses_bad_limits_before_touching_the_folder(tmp_path, kwargs, words):
    with pytest.raises(ProxylabError, match=words):
        ZooStore(tmp_path / "new", dim=4, **kwargs)
    assert not (tmp_path / "new").exists()


def test_create_app_refuses_an_unbounded_body_limit(tmp_path):
    from proxylab.service.app import MAX_BODY_BYTES, create_app

    for value in (MAX_BODY_BYTES + 1, 0, True):
        with pytest.raises(ProxylabError, match="max_body_bytes must be"):
            create_app(tmp_path / "new", dim=4, max_body_bytes=value)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("flag, value", [("--max-body-mb", "inf"), ("--fetch-seconds", "inf"),
                                         ("--fetch-seconds", "-inf"), ("--fetch-max-mb", "inf"),
                                         ("--fetch-seconds", "1e12"), ("--max-body-mb", "1e300")])
def test_serve_refuses_infinite_or_huge_limits_in_one_line(tmp_path, capsys, flag, value):
    from proxylab.cli import main

    index = make_index(tmp_path / "idx")
    assert main(["serve", "--index", str(index), f"{flag}={value}"]) == 2  # = : argparse reads -inf as a flag
    err = capsys.readouterr().err
    assert f"{flag} must be positive and at most" in err and "Traceback" not in err and "OverflowError" not in err


# --- probe_timeout, the old name of fetch_seconds ------------------------------------------------------------

def test_create_app_maps_probe_timeout_with_a_deprecation_warning(tmp_path):
    from proxylab.service.app import create_app

    with pytest.warns(DeprecationWarning, match="probe_timeout is deprecated: use fetch_seconds") as caught:
        app = create_app(tmp_path / "idx", dim=4, probe_timeout=7)
    try:
        assert app.state.store.fetch_seconds == 7.0
        assert caught[0].filename == __file__  # points at the caller's line, not at proxylab's
    finally:
        app.state.store.close()


def test_zoo_store_maps_probe_timeout_and_refuses_both_names(tmp_path):
    with pytest.warns(DeprecationWarning) as caught:
        store = ZooStore(tmp_path / "idx", dim=4, probe_timeout=2.5)
    try:
        assert store.fetch_seconds == 2.5 and caught[0].filename == __file__
    finally:
        store.close()
    with pytest.raises(ProxylabError, match="give fetch_seconds only"):
        ZooStore(tmp_path / "other", dim=4, probe_timeout=2, fetch_seconds=3)
    with pytest.warns(DeprecationWarning), pytest.raises(ProxylabError, match="probe_timeout must be"):
        ZooStore(tmp_path / "other", dim=4, probe_timeout=math.inf)
    assert not (tmp_path / "other").exists()


def test_no_warning_without_probe_timeout(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        store = ZooStore(tmp_path / "idx", dim=4, fetch_seconds=4)
    try:
        assert store.fetch_seconds == 4.0
    finally:
        store.close()
    store = ZooStore(tmp_path / "idx")  # the default
    try:
        assert store.fetch_seconds == 30.0
    finally:
        store.close()
