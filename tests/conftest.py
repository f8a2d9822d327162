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
# The machine-wide model cache: one for the whole session (the real model converts once per run, not per test), never
# the user's; EPTCTL_TEST_MODELS names a cache to keep between sessions (a CI cache folder).
os.environ["EPTCTL_MODELS"] = os.environ.get("EPTCTL_TEST_MODELS") or tempfile.mkdtemp(prefix="eptctl-models-")
# EPTCTL_TEST_DEVICE=cpu|cuda: the device the suite runs on. eptctl puts models on CUDA whenever torch sees it
# (eptctl.backbones.loading.default_device), so "cuda" only checks that a GPU is there, and "cpu" hides every GPU
# before torch starts, from this process and every CLI or server process a test starts. Unset: eptctl's own choice.
TEST_DEVICE = os.environ.get("EPTCTL_TEST_DEVICE", "").strip()
if TEST_DEVICE == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402


def pytest_configure(config):
    if TEST_DEVICE not in ("", "cpu", "cuda"):
        raise pytest.UsageError(f"EPTCTL_TEST_DEVICE must be cpu or cuda, got {TEST_DEVICE!r}")
    if TEST_DEVICE == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("EPTCTL_TEST_DEVICE=cuda, but torch sees no CUDA device")


def pytest_report_header(config):
    if not TEST_DEVICE:
        return None
    from device_support import device

    return f"eptctl test device: {device()} (EPTCTL_TEST_DEVICE)"


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
