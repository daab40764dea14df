"""The outbound time budget covers connecting: name resolution, every resolved address, the TLS handshake.

Addresses that never answer are real: a listening socket whose accept queue is full drops further SYNs, so a
connect to it hangs exactly like one to a black-holed host; a listener nobody accepts from completes TCP but
never speaks TLS. Only the resolver is replaced (monkeypatched getaddrinfo), to map a name to such addresses."""
import socket
import threading
import time

import pytest

from proxylab.service.fetch import FetchBudget, FetchError, fetch
from tests.service.bad_servers import BadServer

LIMIT = 1 << 20
MARGIN = 0.5  # seconds of scheduling slack on a loaded 2-core machine


@pytest.fixture(scope="module")
def full_backlog():
    """A port where connect() hangs: listen(0) and one connection filling the queue, never accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=2)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        with pytest.raises(OSError):  # the premise: a further connect does not complete
            probe.connect(listener.getsockname())
    finally:
        probe.close()
    yield listener.getsockname()[1]
    filler.close()
    listener.close()


def resolver(monkeypatch, table):
    """getaddrinfo answering `table[host]` (a list of (ip, port)) for the hosts in it, the real one otherwise."""
    real = socket.getaddrinfo
    asked = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in table:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        entry = table[host]
        if callable(entry):
            entry = entry()
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr) for addr in entry]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def timed_failure(url, seconds):
    start = time.monotonic()
    with pytest.raises(FetchError) as err:
        fetch(url, None, FetchBudget(seconds), LIMIT)
    return str(err.value), time.monotonic() - start


def test_several_silent_addresses_share_one_budget(monkeypatch, full_backlog):
    # socket.create_connection would give each of the 4 addresses the whole timeout: 4 x 0.8 s
    resolver(monkeypatch, {"black.hole.test": [("127.0.0.1", full_backlog)] * 4})
    message, seconds = timed_failure(f"http://black.hole.test:{full_backlog}/info", 0.8)
    assert "did not answer within 0.8 s" in message
    assert seconds < 0.8 + MARGIN, seconds


def test_a_refusing_address_is_skipped_for_the_next_one_within_the_budget(monkeypatch, full_backlog):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connect is refused at once
    with BadServer() as bad:
        good_port = bad.httpd.server_address[1]
        resolver(monkeypatch, {"multi.test": [("127.0.0.1", refused_port), ("127.0.0.1", good_port)]})
        # the port in the URL is only what is resolved; the addresses carry their own ports
        body = fetch(f"http://multi.test:{good_port}/counting/info", None, FetchBudget(5), LIMIT)
        assert b"num_classes" in body
        resolver(monkeypatch, {"multi.test": [("127.0.0.1", full_backlog), ("127.0.0.1", good_port)]})
        message, seconds = timed_failure(f"http://multi.test:{good_port}/counting/info", 0.6)
        assert "within 0.6 s" in message and seconds < 0.6 + MARGIN  # the silent first one took it all


def test_slow_name_resolution_is_cut_at_the_budget(monkeypatch):
    release = threading.Event()

    def slow():
        release.wait(5)  # a resolver waiting on a dead DNS server
        return [("127.0.0.1", 9)]

    asked = resolver(monkeypatch, {"slow.dns.test": slow})
    try:
        message, seconds = timed_failure("http://slow.dns.test/info", 0.5)
        assert asked == ["slow.dns.test"] and "within 0.5 s" in message and seconds < 0.5 + MARGIN
    finally:
        release.set()


def test_a_silent_tls_handshake_is_cut_at_the_budget():
    # TCP completes (the kernel queues the connection), the ClientHello is never answered
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        message, seconds = timed_failure(f"https://127.0.0.1:{listener.getsockname()[1]}/info", 0.7)
        assert "within 0.7 s" in message and seconds < 0.7 + MARGIN
    finally:
        listener.close()


def test_a_spent_budget_stops_before_the_next_call_connects(monkeypatch, full_backlog):
    asked = resolver(monkeypatch, {"black.hole.test": [("127.0.0.1", full_backlog)] * 2})
    budget = FetchBudget(0.5)
    with pytest.raises(FetchError):
        fetch(f"http://black.hole.test:{full_backlog}/info", None, budget, LIMIT)
    assert budget.remaining() <= 0 and asked == ["black.hole.test"]
    with pytest.raises(FetchError, match="used up"):
        fetch(f"http://black.hole.test:{full_backlog}/info", None, budget, LIMIT)
    assert asked == ["black.hole.test"]  # not even resolved again


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost (made with the openssl command line)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"


def test_https_through_the_bounded_connection(monkeypatch, tls_files):
    import ssl

    import proxylab.service.fetch as fetch_module

    cert, key = tls_files
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    bad = BadServer()
    bad.httpd.socket = server_side.wrap_socket(bad.httpd.socket, server_side=True)
    with bad:
        port = bad.httpd.server_address[1]
        # the default context verifies against the system's CAs, which do not know this certificate
        message, _ = timed_failure(f"https://127.0.0.1:{port}/counting/info", 5)
        assert "TLS connection failed (CERTIFICATE_VERIFY_FAILED)" in message
        trusting = ssl.create_default_context(cafile=str(cert))
        monkeypatch.setattr(fetch_module, "_tls_context", trusting)
        for host in ("127.0.0.1", "localhost"):  # an IP literal, and a name (resolved in the resolver thread)
            body = fetch(f"https://{host}:{port}/counting/info", None, FetchBudget(5), LIMIT)
            assert b'"num_classes": 3' in body
        assert bad.paths[-2:] == ["/counting/info", "/counting/info"]
