"""Starting a server in a subprocess and waiting until it is ready: what the tests and ``python -m bench serve`` do
(stdlib only, so callers need no HTTP client).

``start`` picks a free loopback port, appends ``--port N`` to the command and returns once ``GET /readyz`` answers
200; a server that exits or stays unready raises ``ServerNotReady`` with the end of its stderr.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


class ServerNotReady(RuntimeError):
    """The server exited before it was ready, or did not answer ``/readyz`` with 200 in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start(command: list[str], *, env: dict | None = None, timeout_s: float = 90.0,
          stdout=subprocess.PIPE) -> tuple[subprocess.Popen, str]:
    """Run ``command --port N`` on a free loopback port; (process, base URL) once it is ready. Raises
    ``ServerNotReady`` (the process is killed first when it is still running)."""
    port = free_port()
    proc = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=stdout, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base, timeout_s)
    return proc, base


def wait_ready(proc: subprocess.Popen, base: str, timeout_s: float = 90.0, interval_s: float = 0.2) -> None:
    """Poll ``base/readyz`` until it answers 200. Raises ``ServerNotReady`` if ``proc`` exits (with its stderr's
    tail) or ``timeout_s`` passes (after killing it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
            raise ServerNotReady(f"the server exited ({proc.returncode}) before it was ready: {err}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet, or 503 (HTTPError) while it loads
            pass
        time.sleep(interval_s)
    proc.kill()
    raise ServerNotReady(f"the server at {base} was not ready in {timeout_s:.0f} s")
