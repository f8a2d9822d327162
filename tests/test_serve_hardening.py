"""`eptctl serve` refuses bad settings at start (one line with a hint, exit 2) and answers bad requests with their
documented status and the JSON error shape, then keeps answering: tokens, off-loopback, bind errors, body size,
UTF-8, metric labels, removed adapters, stalled connections.

Every server is a real subprocess on a free loopback port (conftest's ``eptctl_server``); nothing binds off
loopback; every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

from eptctl.core.errors import ConfigError
from eptctl.serving import binding
from eptctl.serving.config import ServeConfig
from eptctl.serving.launch import free_port
from registry import Registry
from serve_support import LLAMA, tiny_adapters

TOKEN = "t0ken-t0ken-t0ken-t0ken"  # 23 characters: a real secret by the server's rule
BODY_LIMIT = 4096
TIMEOUT = 1.0  # --timeout-read and --timeout-keep-alive of the module's server (s)


def refused(home, *args: str, env: dict | None = None) -> str:
    """Run ``eptctl serve ARGS``; assert it exits 2 with one line and a hint on stderr; that line."""
    environ = {**os.environ, "EPTCTL_HOME": str(home), **(env or {})}
    if env is None or "EPTCTL_SERVE_TOKEN" not in env:
        environ.pop("EPTCTL_SERVE_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "eptctl", "serve", "--model", LLAMA, *args], env=environ,
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "hint" in lines[0], (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr
    return lines[0]


# -- refused at start -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["flag-empty", "flag-blank", "flag-short", "env-empty", "env-blank"])
def test_a_token_that_is_not_a_secret_is_refused_at_start(tmp_path, how):
    kind, value = how.split("-")
    token = {"empty": "", "blank": "   ", "short": "s3cret"}[value]
    if kind == "flag":
        line = refused(tmp_path, "--token", token)
    else:
        line = refused(tmp_path, env={"EPTCTL_SERVE_TOKEN": token})
    assert "--token" in line and ("empty" in line or "16 characters" in line)
    assert token.strip() == "" or token not in line  # a secret is never written out


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_off_loopback_without_a_token_is_refused(tmp_path, host):
    line = refused(tmp_path, "--host", host)
    assert f"--host {host}" in line and "--insecure-no-token" in line


def test_the_loopback_rule_by_address_and_by_name(monkeypatch):
    assert binding.is_loopback("127.0.0.1") and binding.is_loopback("::1") and binding.is_loopback("localhost")
    assert not binding.is_loopback("0.0.0.0") and not binding.is_loopback("::")
    real = socket.getaddrinfo

    def fake(host, *args, **kw):  # a name that resolves to a LAN address, without a network
        if host == "lan-box":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 0))]
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(ConfigError, match="no token"):
        binding.check_exposure(ServeConfig(host="lan-box"))
    binding.check_exposure(ServeConfig(host="lan-box", token=TOKEN))  # a token, or the explicit opt-out, allows it
    binding.check_exposure(ServeConfig(host="0.0.0.0", insecure_no_token=True))


def test_bind_errors_are_one_line_with_a_hint(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        line = refused(tmp_path, "--port", str(busy.getsockname()[1]))
    assert "in use" in line and "--port" in line
    assert "does not resolve" in refused(tmp_path, "--host", "no-such-host.invalid")
    assert "not one of this machine's" in refused(tmp_path, "--host", "192.0.2.10", "--insecure-no-token")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind a port below 1024: no permission error to provoke")
def test_a_privileged_port_is_one_line_with_a_hint(tmp_path):
    assert "permission denied" in refused(tmp_path, "--port", "80")


def test_the_default_body_limit_fits_the_largest_valid_request():
    config = ServeConfig()
    body = json.dumps({"adapter": "rt-polarity@latest",
                       "inputs": [{"text": "é" * config.max_text_chars, "text_pair": "é" * config.max_text_chars,
                                   "adapter": "rt-polarity@latest"}] * config.max_inputs}, ensure_ascii=False)
    assert len(body.encode()) <= config.body_limit < 32 << 20
    assert ServeConfig(max_body_bytes=1000).body_limit == 1000


# -- a running server ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registry with two rt-polarity adapters on the tiny Llama (``refs`` a list)."""
    world = tiny_adapters(tmp_path_factory.mktemp("serve-hardening"),
                          [(seed, "rt-polarity", LLAMA, seed) for seed in (0, 1)])
    return {**world, "refs": [world["refs"][0], world["refs"][1]]}


@pytest.fixture(scope="module")
def server(world, eptctl_server):
    """One server with a token, a small body limit and one-second timeouts."""
    return eptctl_server(world["home"], "--max-body-bytes", str(BODY_LIMIT), "--timeout-read", str(TIMEOUT),
                         "--timeout-keep-alive", str(TIMEOUT), "--resolve-ttl", "0", registry=world["url"],
                         token=TOKEN)


def assert_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "hint"} and body["error"] and body["hint"]
    return body


def still_answers(server, ref: str) -> None:
    response = server.post({"adapter": ref, "inputs": ["A triumph."]})
    assert response.status_code == 200 and response.json()["outputs"][0]["adapter"] == ref, response.text


def raw(server, data: bytes, timeout: float = 10) -> socket.socket:
    """A raw connection to the server that has sent ``data``."""
    port = int(server.base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """(status, JSON body) of the one response on ``sock``, read until the server closes it."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_the_token_guards_every_route_but_the_probes(server, world):
    assert_error(httpx.post(f"{server.base}/v1/predict", json={"adapter": world["refs"][0], "inputs": ["x"]}), 401)
    assert_error(httpx.get(f"{server.base}/v1/adapters", headers={"Authorization": f"Bearer {TOKEN}x"}), 401)
    assert_error(httpx.get(f"{server.base}/metrics"), 401)
    assert httpx.get(f"{server.base}/readyz").status_code == 200
    still_answers(server, world["refs"][0])


def test_a_body_that_is_not_utf8_json_is_422(server, world):
    ref = world["refs"][0]
    headers = {**server.auth, "content-type": "application/json"}
    for content in (b'{"adapter": "' + ref.encode() + b'", "inputs": ["\xff\xfe caf\xe9"]}', b"\xff",
                    b'{"adapter": "x", "inputs": ["\xed\xa0\x80"]}', b'{"inputs": '):  # Latin-1, a lone surrogate
        body = assert_error(httpx.post(f"{server.base}/v1/predict", content=content, headers=headers), 422)
        assert body["error"].startswith("malformed request") or "UTF-8" in body["error"]
    still_answers(server, ref)


def test_metric_labels_are_route_templates_and_registry_adapters(server, world):
    for n in range(12):  # a scanner: every path its own, and every adapter reference
        assert_error(httpx.get(f"{server.base}/scan-{n}/.env", headers=server.auth), 404)
        assert_error(httpx.get(f"{server.base}/scan-{n}/.env"), 401)
        assert_error(server.post({"adapter": f"no-such-task-{n}@1", "inputs": ["x"]}), 404)
    assert_error(server.post({"adapter": world["refs"][0], "inputs": 5}), 422)
    metrics = server.metrics()
    routes = {re.search(r'route="([^"]*)"', k).group(1) for k in metrics if k.startswith("eptctl_errors_total{")}
    assert routes <= {"unmatched", "/v1/predict", "/v1/adapters", "/metrics"}, routes
    assert metrics['eptctl_errors_total{route="unmatched",status="404"}'] >= 12
    assert metrics['eptctl_errors_total{route="unmatched",status="401"}'] >= 12
    adapters = {re.search(r'adapter="([^"]*)"', k).group(1) for k in metrics if k.startswith("eptctl_requests_total{")}
    assert adapters <= {"unresolved", "mixed", *world["refs"]}, adapters
    # every answer of /v1/predict is a request: a 422 of the body's shape as much as a 404 of its reference
    assert metrics['eptctl_requests_total{adapter="unresolved",status="422"}'] >= 1
    assert metrics['eptctl_requests_total{adapter="unresolved",status="404"}'] >= 12
    still_answers(server, world["refs"][0])


def test_a_body_over_the_limit_is_413_as_it_streams_in(server, world):
    # Content-Length over the limit: answered at once, though not one byte of the body was sent
    started = time.monotonic()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {150 << 20}\r\n\r\n").encode()
    with raw(server, head) as sock:
        status, body = read_response(sock)
    assert status == 413 and str(BODY_LIMIT) in body["error"] and "--max-body-bytes" in body["hint"]
    assert time.monotonic() - started < 5
    # chunked, no length: refused once the count passes the limit, before the body's end ever arrives
    chunked = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"a" * 1024
    with raw(server, chunked + b"".join(b"400\r\n" + chunk + b"\r\n" for _ in range(BODY_LIMIT // 1024 + 2))) as sock:
        status, body = read_response(sock)
    assert status == 413 and set(body) == {"error", "hint"}
    # through a client: the same answer
    big = {"adapter": world["refs"][0], "inputs": ["x" * (BODY_LIMIT + 10)]}
    assert_error(server.post(big), 413)
    still_answers(server, world["refs"][0])


def test_stalled_connections_are_closed_in_the_configured_time(server, world):
    # half a request line, then nothing: the connection is closed after --timeout-read
    started = time.monotonic()
    with raw(server, b"GET /healthz HTT") as sock:
        assert sock.recv(1024) == b""
    assert TIMEOUT * 0.8 < time.monotonic() - started < TIMEOUT + 4
    # a head, then a stalled body: 408 in the error shape
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inputs\"").encode()
    started = time.monotonic()
    with raw(server, head) as sock:
        status, body = read_response(sock)
    assert status == 408 and "--timeout-read" in body["hint"] and time.monotonic() - started < TIMEOUT + 4
    # an idle kept-alive connection: closed after --timeout-keep-alive
    with raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and time.monotonic() - started < TIMEOUT + 4
    still_answers(server, world["refs"][0])


def test_a_removed_adapter_leaves_the_listing_and_the_gauge(server, world):
    refs = world["refs"]
    for ref in refs:
        still_answers(server, ref)
    listed = httpx.get(f"{server.base}/v1/adapters", headers=server.auth).json()["adapters"]
    assert {a["ref"] for a in listed} >= set(refs)
    before = server.metrics()["eptctl_loaded_adapters"]
    reg = Registry(world["url"], artifacts=world["home"] / "artifacts")
    reg.delete(refs[1], force=True)
    reg.close()
    listed = httpx.get(f"{server.base}/v1/adapters", headers=server.auth).json()["adapters"]
    assert refs[1] not in {a["ref"] for a in listed} and refs[0] in {a["ref"] for a in listed}
    assert server.metrics()["eptctl_loaded_adapters"] == before - 1
    assert_error(server.post({"adapter": refs[1], "inputs": ["x"]}), 404)
    still_answers(server, refs[0])
