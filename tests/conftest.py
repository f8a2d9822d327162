"""Shared fixtures. Tests never reach a model hub and never touch the user's ~/.eptctl."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="eptctl-hfds-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("EPTCTL_ARTIFACTS", None)  # never write test files into a user's (or a team's) artifact root

import pytest  # noqa: E402


@pytest.fixture
def eptctl_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("EPTCTL_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _default_data_dir():
    """``--data-dir`` sets the GLUE data directory for the whole process; no test leaks it into the next."""
    yield
    from eptctl.data.glue import set_data_dir

    set_data_dir(None)


@pytest.fixture(scope="module")
def eptctl_server():
    """Start ``eptctl serve``: ``eptctl_server(home, *args, model=..., registry=...)`` returns a ready
    ``serve_support.Server``. Module-scoped, so a module's shared server (tests/test_serve.py's ``server``) can use
    it; every server still running when the module ends gets SIGTERM and must exit 0."""
    from serve_support import Server

    started: list[Server] = []

    def start(home, *args: str, **kw) -> Server:
        server = Server(home, *args, **kw)
        started.append(server)
        return server

    yield start
    codes = [server.stop() for server in started if server.proc.poll() is None]
    assert all(code == 0 for code in codes), codes
