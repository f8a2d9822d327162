"""Starting and stopping a local vLLM server in a subprocess: what the tests and ``python -m bench serve --engine
vllm`` do (a deployment starts vLLM itself, with the command ``eptctl engine vllm prepare`` prints).

vLLM runs in its own environment (``./setup.sh --with-vllm`` makes ``.venv-vllm``); ``vllm_python`` finds it. The
server gets its own process group (it starts engine-core and worker processes), so ``kill`` and ``stop`` reach all
of them; its log goes to a file, never to a pipe nobody reads (vLLM logs enough to fill one and block).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from eptctl.serving.engines.prepare import serve_command
from eptctl.serving.launch import ServerNotReady, free_port

VLLM_PYTHON_ENV = "EPTCTL_VLLM_PYTHON"


def vllm_python(repo: Path | None = None) -> str | None:
    """The python of a vLLM environment: ``$EPTCTL_VLLM_PYTHON``, else ``<repo>/.venv-vllm/bin/python`` (``repo``:
    eptctl's checkout), else None."""
    explicit = os.environ.get(VLLM_PYTHON_ENV)
    if explicit:
        return explicit
    repo = repo or Path(__file__).resolve().parents[3]
    candidate = repo / ".venv-vllm" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


@dataclass
class VllmProcess:
    """A running vLLM server: its process (leader of its own group), base URL and log file."""

    proc: subprocess.Popen
    base: str
    log: Path

    def kill(self) -> None:
        """SIGKILL the whole server at once (a crash, as the outage tests make one)."""
        _signal_group(self.proc, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL whatever is left after ``timeout_s``."""
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.proc, signal.SIGKILL)  # engine-core children outlive a leader that exited
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass(frozen=True)
class LaunchOptions:
    """How to start vLLM: on ``port`` (None: a free one), with ``max_model_len`` positions per sequence, a
    ``kv_cache`` of that many bytes (vLLM's size syntax), weights in ``dtype``, environment ``env`` (None: this
    process's), ready within ``timeout_s`` seconds."""

    port: int | None = None
    max_model_len: int = 512
    kv_cache: str = "1G"
    dtype: str = "float32"
    env: dict | None = None
    timeout_s: float = 300.0


def start_vllm(folder: Path, served_name: str, python: str, log: Path,
               options: LaunchOptions = LaunchOptions()) -> VllmProcess:
    """Start vLLM's OpenAI server on the prepared ``folder`` on a loopback port and wait until ``GET /health``
    answers 200. Raises ``ServerNotReady`` (with the log's tail) if it exits or is not ready within
    ``options.timeout_s`` (then it is stopped)."""
    port = options.port or free_port()
    command = serve_command(folder, served_name, python, port, options.max_model_len, options.kv_cache,
                            options.dtype)
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=options.env,
                                start_new_session=True)
    server = VllmProcess(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + options.timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerNotReady(f"vLLM exited ({proc.returncode}) before it was ready: {server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.base}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise ServerNotReady(f"vLLM at {server.base} was not ready in {options.timeout_s:.0f} s: {server.log_tail()}")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this server leads (start_new_session): only what it started
    except ProcessLookupError:
        pass
