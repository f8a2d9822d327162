"""Every ```python block of README.md and docs/*.md runs, against tiny random backbones: a moved module or a renamed
function cannot leave a stale example behind.

The blocks of one file run in order in one namespace, in a temporary folder and EPTCTL_HOME whose default registry
holds a few tiny adapters (rt-polarity, rt-subjectivity). Real model names become ``tiny-random-llama`` (also when an
example relies on the default model), a hub id becomes a local copy of that tiny model, a team's PostgreSQL URL a
second SQLite registry, and step counts shrink to 2. A block preceded by ``<!-- docs-test: skip (REASON) -->`` is
not run; the reason is required.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?P<marker><!-- docs-test: skip \((?P<reason>[^)]+)\) -->\n)?```python\n(?P<code>.*?)```", re.S)
TINY = "tiny-random-llama"


def blocks(path: Path) -> list[tuple[str, str | None]]:
    """(code, skip reason or None) of each python block of a markdown file."""
    return [(m["code"], m["reason"]) for m in BLOCK.finditer(path.read_text())]


def test_the_extractor_sees_skip_markers(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("```python\na = 1\n```\n<!-- docs-test: skip (needs a GPU) -->\n```python\nb = 2\n```\n")
    assert blocks(doc) == [("a = 1\n", None), ("b = 2\n", "needs a GPU")]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A folder with a default registry of tiny adapters, a PEFT export, a tiny model folder and a pair-task CSV."""
    from eptctl import backbones
    from eptctl.engine.config import TrainConfig
    from eptctl.interop.peft_export import export_peft
    from eptctl.methods import EPTConfig
    from eptctl.workflows.train import train_task
    from registry import Registry

    work = tmp_path_factory.mktemp("docs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EPTCTL_HOME", str(work / "home"))
        mp.delenv("EPTCTL_REGISTRY_URL", raising=False)
        reg = Registry()
        backbone = backbones.load(TINY)
        small = {"registry": reg, "backbone": backbone, "model": TINY, "max_train": 32, "max_eval": 16,
                 "train_cfg": TrainConfig(steps=2, batch_size=8, eval_every=1)}
        first = train_task("rt-polarity", method_cfg=EPTConfig(method="pt", prompt_length=6, max_length=64), **small)
        train_task("rt-polarity", method_cfg=EPTConfig(method="ept", prompt_length=6, max_length=64), **small)
        train_task("rt-subjectivity", method_cfg=EPTConfig(method="pt", prompt_length=6, max_length=64), **small)
        export_peft(reg, first.record.ref, work / "rt-polarity-peft")
        backbone.model.save_pretrained(work / "tiny-llama")
        backbone.tokenizer.save_pretrained(work / "tiny-llama")
        reg.close()
    (work / "data").mkdir()
    (work / "data" / "pairs.csv").write_text("premise,hypothesis,label\n" + "".join(
        f"a cat sat {i},a cat {'sat' if i % 2 else 'ran'},{'entail' if i % 2 else 'contradict'}\n" for i in range(40)))
    return work


def substitute(code: str, work: Path) -> str:
    """The example with this machine's stand-ins for what it cannot reach or afford."""
    code = re.sub(r'"(smollm2-135m|SmolLM2-135M-Instruct|minilm-l6)"', f'"{TINY}"', code)
    code = code.replace('"HuggingFaceTB/SmolLM2-135M-Instruct"', f'"{work / "tiny-llama"}"')
    code = re.sub(r'"postgresql\+psycopg://[^"]*"', f'"sqlite:///{work / "team.db"}"', code)
    return re.sub(r"\bsteps=\d+", "steps=2", code)


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_python_examples_run(doc, seeded, monkeypatch):
    found = blocks(doc)
    if not found:
        pytest.skip(f"{doc.name} has no python example")
    from eptctl import backbones

    real_load = backbones.load

    def tiny_load(name=backbones.DEFAULT_MODEL, **kwargs):  # examples that rely on the default (real) model
        return real_load(TINY if backbones.canonical_name(name) in backbones.EMBEDDED else name, **kwargs)

    monkeypatch.setattr(backbones, "load", tiny_load)
    monkeypatch.setenv("EPTCTL_HOME", str(seeded / "home"))
    monkeypatch.delenv("EPTCTL_REGISTRY_URL", raising=False)
    monkeypatch.chdir(seeded)
    namespace: dict = {"__name__": f"docs_{doc.stem}"}
    for number, (code, skip) in enumerate(found, 1):
        if skip:
            continue
        try:
            exec(compile(substitute(code, seeded), f"{doc.name} example {number}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{doc.name}, python example {number} fails: {type(err).__name__}: {err}") from err
