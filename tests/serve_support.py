"""`eptctl serve` as the tests run it: a subprocess on a free loopback port, ready (``/readyz`` answered 200) when
constructed, through ``eptctl.serving.launch`` (the helper ``python -m bench serve`` uses too). The fixture that
starts and always stops these servers is ``eptctl_server`` in conftest.py."""

from __future__ import annotations

import os
import re
import signal
import sys

import httpx

from eptctl.serving import launch

LLAMA = "tiny-random-llama"


class Server:
    """``eptctl serve --model MODEL [--registry URL] ARGS`` with ``EPTCTL_HOME=home`` and ``EPTCTL_SERVE_TOKEN=token``
    (none unless given: never the caller's); ``auth`` is the header the token needs (sent by ``post`` unless
    headers are given, and by ``metrics``); ``stop()`` sends SIGTERM and returns the exit code."""

    def __init__(self, home, *args: str, model: str = LLAMA, registry: str | None = None, token: str | None = None):
        env = {**os.environ, "EPTCTL_HOME": str(home)}
        env.pop("EPTCTL_SERVE_TOKEN", None)
        if token is not None:
            env["EPTCTL_SERVE_TOKEN"] = token  # through the environment: a token on a command line is visible in ps
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        command = [sys.executable, "-m", "eptctl", "serve", "--model", model,
                   *(["--registry", registry] if registry else []), *args]
        self.proc, self.base = launch.start(command, env=env, timeout_s=90)

    def post(self, body, **kw) -> httpx.Response:
        kw.setdefault("headers", self.auth)
        return httpx.post(f"{self.base}/v1/predict", json=body, timeout=60, **kw)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {'name{labels}': value}."""
        text = httpx.get(f"{self.base}/metrics", timeout=10, headers=self.auth).text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def tiny_adapters(home, adapters, prepare=None) -> dict:
    """Train one tiny EPT adapter per ``(name, task, model, seed)`` of ``adapters`` (2 steps, prompt length 6) into a
    registry under ``home``; ``prepare(registry, refs)`` may then move aliases. Returns ``{"home", "url", "refs"}``
    with ``refs[name]`` each adapter's reference."""
    import pytest

    from eptctl.engine.config import TrainConfig
    from eptctl.methods import EPTConfig
    from eptctl.workflows.train import train_task
    from registry import Registry

    url = f"sqlite:///{home / 'registry.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EPTCTL_HOME", str(home))
        reg = Registry(url)
        refs = {name: train_task(task, registry=reg, model=model, max_train=16, max_eval=8,
                                 method_cfg=EPTConfig(method="ept", prompt_length=6, max_length=64),
                                 train_cfg=TrainConfig(steps=2, batch_size=8, eval_every=1, seed=seed)).record.ref
                for name, task, model, seed in adapters}
        if prepare is not None:
            prepare(reg, refs)
        reg.close()
    return {"home": home, "url": url, "refs": refs}
