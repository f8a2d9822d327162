"""Export, import, PEFT export and model cards, on tiny random backbones and real SQLite/PostgreSQL registries.

Every registry here has its own EPTCTL_HOME, so artifact files of the source and of each target never mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from registry_fixtures import pg_url  # noqa: F401
from typer.testing import CliRunner

from eptctl.interop.bundle import CARD_NAME, _card_checksum, export_bundle, import_bundle, read_bundle
from eptctl.cli.app import app
from eptctl.core.errors import EptctlError
from registry import URL_ENV, ParentLink, Registry, sql_insert

SMALL = dict(model="tiny-random-llama", max_train=16, max_eval=8)


@dataclass
class Source:
    home: Path
    url: str
    reg: Registry
    pt: object  # rt-polarity@1, alias "prod", tag "baseline"
    child: object  # rt-subjectivity@1, fused from pt
    dept: object
    ept: object
    t5: object  # a pt adapter on the tiny seq2seq backbone


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from eptctl.engine.config import TrainConfig
    from eptctl.methods import EPTConfig
    from eptctl.workflows.train import train_task
    from eptctl.workflows.transfer import Source as InitSource, TransferOptions

    home = tmp_path_factory.mktemp("source-home")
    url = f"sqlite:///{home / 'registry.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EPTCTL_HOME", str(home))
        mp.delenv(URL_ENV, raising=False)
        reg = Registry(url)

        def train(task, method, **kw):
            kw = {**SMALL, **kw}
            return train_task(task, registry=reg, method_cfg=EPTConfig(method=method, prompt_length=6,
                                   max_length=32), train_cfg=TrainConfig(steps=2, batch_size=8, eval_every=1),
                                   command_line=f"eptctl train {task} --method {method}", **kw).record

        pt = train("rt-polarity", "pt")
        child = train("rt-subjectivity", "pt", transfer=TransferOptions([InitSource(pt.id, 1.0)]))
        dept = train("rt-polarity", "dept")
        ept = train("rt-polarity", "ept")
        t5 = train("rt-polarity", "pt", model="tiny-random-t5")
        reg.set_alias(pt, "prod")
        pt = reg.add_tags(pt, ["baseline"])
    yield Source(home, url, reg, pt, reg.get(child.id), dept, ept, t5)
    reg.close()


def cli(home: Path, *args: str):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EPTCTL_HOME", str(home))
        mp.delenv(URL_ENV, raising=False)
        return CliRunner().invoke(app, list(args))


def ok(home: Path, *args: str):
    result = cli(home, *args)
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return result


def user_error(result, *needles: str) -> str:
    """One line on stderr, with a hint, exit code 2, no traceback; returns the line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "hint:" in lines[0], result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def open_target(home: Path, url: str | None = None) -> Registry:
    with pytest.MonkeyPatch.context() as mp:  # the registry binds its artifact folder when it opens
        mp.setenv("EPTCTL_HOME", str(home))
        return Registry(url or f"sqlite:///{home / 'registry.db'}")


def store_files(home: Path) -> list[Path]:
    root = home / "artifacts"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_same_adapter(ours, theirs) -> None:
    assert theirs.id == ours.id
    files = lambda rec: {a.kind: (a.sha256, a.size) for a in rec.artifacts}  # noqa: E731
    assert files(theirs) == files(ours)
    key = lambda m: (m.split, m.name, m.step is not None, m.step or 0)  # noqa: E731
    assert sorted(theirs.metrics, key=key) == sorted(ours.metrics, key=key)
    assert any(m.step is not None for m in theirs.metrics)  # the values recorded during training came along
    for name in ("task", "method", "config", "params_by_group", "trainable_params", "backbone", "run", "summary",
                 "description", "tags", "created_at"):
        assert getattr(theirs, name) == getattr(ours, name), name


# --- export / import --------------------------------------------------------------------------------------------------
def test_sqlite_to_sqlite_keeps_identity_and_lineage_to_existing_parents(source, tmp_path):
    src = source
    pt_dir = export_bundle(src.reg, src.pt.ref, tmp_path / "pt").directory
    child_dir = export_bundle(src.reg, src.child.ref, tmp_path / "child").directory
    assert sorted(os.listdir(pt_dir)) == ["README.md", CARD_NAME, "servable.safetensors", "training_state.safetensors"]

    # Target 1 has none of the parents: the link is reported, not invented.
    lonely = open_target(tmp_path / "t1")
    done = import_bundle(lonely, child_dir)
    assert not done.already_present and done.source_ref == "rt-subjectivity@1"
    assert done.skipped_parents == [{"id": src.pt.id, "ref": "rt-polarity@1"}] and done.record.parents == []
    assert_same_adapter(src.child, done.record)

    # Target 2 gets the parent first: the link is restored with its weight; the alias comes along.
    tgt = open_target(tmp_path / "t2")
    tgt.ensure_task(src.reg.get_task("rt-polarity"))
    first = import_bundle(tgt, pt_dir)
    assert first.record.ref == "rt-polarity@1" and first.record.aliases == ["prod"] and first.skipped_aliases == []
    assert_same_adapter(src.pt, first.record)
    second = import_bundle(tgt, child_dir)
    assert second.skipped_parents == [] and second.record.parents == src.child.parents
    assert [p.id for p in tgt.parents(second.record)] == [src.pt.id]
    assert [c.id for c in tgt.children(first.record)] == [src.child.id]

    # The files are in the target's own artifact store, byte for byte, and load.
    for art in second.record.artifacts:
        assert Path(art.path).is_relative_to(tmp_path / "t2" / "artifacts")
        assert Path(art.path).read_bytes() == Path(src.child.artifact(art.kind).path).read_bytes()
    tensors, _ = tgt.load_servable(second.record.id[:8])
    assert torch.equal(tensors["prompt"], src.reg.load_servable(src.child)[0]["prompt"])
    assert tgt.resolve("rt-polarity@prod").id == src.pt.id


def test_aliases_taken_in_the_target_are_kept_and_reported(source, tmp_path):
    bundle = export_bundle(source.reg, source.pt.ref, tmp_path / "pt").directory
    tgt = open_target(tmp_path / "t")
    dept = import_bundle(tgt, export_bundle(source.reg, source.dept.ref, tmp_path / "dept").directory).record
    tgt.set_alias(dept, "prod")
    done = import_bundle(tgt, bundle)
    assert done.skipped_aliases == ["prod"] and done.record.aliases == []
    assert done.record.ref == "rt-polarity@2"  # versions are per registry; the id is the identity
    assert tgt.resolve("rt-polarity@prod").id == source.dept.id


def test_sqlite_to_postgres_keeps_identity(source, tmp_path, pg_url):  # noqa: F811
    bundle = export_bundle(source.reg, source.child.ref, tmp_path / "child").directory
    parent = export_bundle(source.reg, source.pt.ref, tmp_path / "pt").directory
    tgt = open_target(tmp_path / "pg-home", pg_url)
    try:
        import_bundle(tgt, parent)
        done = import_bundle(tgt, bundle)
        assert_same_adapter(source.child, done.record)
        assert done.record.parents == source.child.parents
        assert import_bundle(tgt, bundle).already_present
        assert len(tgt.list_adapters()) == 2
    finally:
        tgt.close()


def test_importing_twice_is_a_no_op_and_a_different_file_under_the_same_id_is_refused(source, tmp_path):
    home = tmp_path / "t"
    ok(source.home, "export", source.pt.ref, str(tmp_path / "b"), "--registry", source.url)
    url = f"sqlite:///{home / 'registry.db'}"
    first = ok(home, "import", str(tmp_path / "b"), "--registry", url).stdout
    assert "imported rt-polarity@1 as rt-polarity@1" in first
    files = store_files(home)
    again = ok(home, "import", str(tmp_path / "b"), "--registry", url, "--json")
    assert json.loads(again.stdout)["already_present"] is True
    assert store_files(home) == files and len(open_target(home).list_adapters()) == 1

    # Same id, other bytes (a consistent, re-checksummed card): refused, not merged.
    other = tmp_path / "other"
    ok(source.home, "export", source.dept.ref, str(other), "--registry", source.url)
    card = json.loads((other / CARD_NAME).read_text())
    card["adapter"]["id"] = source.pt.id
    card["card_sha256"] = _card_checksum(card)
    (other / CARD_NAME).write_text(json.dumps(card))
    user_error(cli(home, "import", str(other), "--registry", url), "already in this registry", "different")


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _recard(directory: Path, edit) -> None:
    """Edit the card and re-checksum it, as a careful forger would."""
    card = json.loads((directory / CARD_NAME).read_text())
    edit(card)
    card["card_sha256"] = _card_checksum(card)
    (directory / CARD_NAME).write_text(json.dumps(card))


def _garbage_servable(d: Path) -> None:
    garbage = b"not a safetensors file at all"
    (d / "servable.safetensors").write_bytes(garbage)

    def edit(card):
        card["files"]["servable"].update(sha256=hashlib.sha256(garbage).hexdigest(), size=len(garbage))

    _recard(d, edit)


TAMPERING = {
    "servable byte flipped": (lambda d: _flip_byte(d / "servable.safetensors"), ["servable.safetensors", "sha256"]),
    "training state truncated": (
        lambda d: (d / "training_state.safetensors").write_bytes((d / "training_state.safetensors").read_bytes()[:100]),
        ["training_state.safetensors", "truncated"]),
    "servable missing": (lambda d: (d / "servable.safetensors").unlink(), ["servable.safetensors", "missing"]),
    "readme edited": (lambda d: (d / "README.md").write_text("# mine now\n"), ["README.md"]),
    "card sha edited": (lambda d: (d / CARD_NAME).write_text((d / CARD_NAME).read_text().replace(
        json.loads((d / CARD_NAME).read_text())["files"]["servable"]["sha256"], "0" * 64)), [CARD_NAME, "changed"]),
    "card sha edited and re-checksummed": (
        lambda d: _recard(d, lambda c: c["files"]["servable"].update(sha256="0" * 64)),
        ["servable.safetensors", "sha256"]),
    "card metric edited": (lambda d: (d / CARD_NAME).write_text((d / CARD_NAME).read_text().replace(
        '"value": ', '"value": 1', 1)), [CARD_NAME, "changed"]),
    "card not json": (lambda d: (d / CARD_NAME).write_text((d / CARD_NAME).read_text()[:200]), [CARD_NAME, "JSON"]),
    "card missing": (lambda d: (d / CARD_NAME).unlink(), [CARD_NAME, "missing"]),
    "garbage file, consistent card": (_garbage_servable, ["servable.safetensors", "safetensors"]),
    "newer format": (lambda d: _recard(d, lambda c: c.update(format_version=99)), ["format version 99"]),
    "path outside the folder": (lambda d: _recard(d, lambda c: c["files"]["servable"].update(path="../x")),
                                [CARD_NAME, "malformed"]),
    "bad metric value": (lambda d: _recard(d, lambda c: c["metrics"][0].update(value="high")),
                         [CARD_NAME, "malformed"]),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_or_truncated_bundles_import_nothing(source, tmp_path, case):
    damage, needles = TAMPERING[case]
    bundle = tmp_path / "b"
    ok(source.home, "export", source.child.ref, str(bundle), "--registry", source.url)
    damage(bundle)
    home, url = tmp_path / "t", f"sqlite:///{tmp_path / 't' / 'registry.db'}"
    user_error(cli(home, "import", str(bundle), "--registry", url), *needles)
    tgt = open_target(home)
    assert tgt.list_adapters(include_archived=True) == [] and tgt.list_tasks() == []
    assert store_files(home) == []


def test_a_failed_import_transaction_leaves_no_files(source, tmp_path, monkeypatch):
    tgt = open_target(tmp_path / "t")
    bundle = export_bundle(source.reg, source.pt.ref, tmp_path / "b").directory
    real = sql_insert._check_parents

    def parent_vanished(conn, new):
        real(conn, new)
        raise EptctlError("simulated: a parent was deleted meanwhile")

    monkeypatch.setattr(sql_insert, "_check_parents", parent_vanished)
    with pytest.raises(EptctlError, match="simulated"):
        import_bundle(tgt, bundle)
    assert tgt.list_adapters() == [] and store_files(tmp_path / "t") == []
    assert tgt.list_tasks() == []  # the task was created in the failed transaction: rolled back with it


def test_export_refuses_a_non_empty_folder_unless_force_and_never_leaves_half_a_bundle(source, tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    user_error(cli(source.home, "export", source.pt.ref, str(target), "--registry", source.url), "not empty", "--force")
    assert os.listdir(target) == ["keep.txt"]
    (tmp_path / "a-file").write_text("x")
    user_error(cli(source.home, "export", source.pt.ref, str(tmp_path / "a-file"), "--registry", source.url),
               "is a file")
    ok(source.home, "export", source.pt.ref, str(target), "--registry", source.url, "--force", "--no-training-state")
    assert sorted(os.listdir(target)) == ["README.md", CARD_NAME, "servable.safetensors"]
    assert read_bundle(target).card["adapter"]["id"] == source.pt.id
    empty = tmp_path / "empty"
    empty.mkdir()
    ok(source.home, "export", source.pt.ref, str(empty), "--registry", source.url)  # an empty folder is fine

    # A failure while writing (here: the disk refuses an fsync) leaves the old folder and no temp folder behind.
    calls = {"n": 0}
    real_fsync = os.fsync

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(EptctlError, match="No space left"):
        export_bundle(source.reg, source.child.ref, target, force=True)
    with pytest.raises(EptctlError, match="No space left"):
        export_bundle(source.reg, source.child.ref, tmp_path / "new", force=True)
    monkeypatch.undo()
    assert read_bundle(target).card["adapter"]["id"] == source.pt.id  # the previous bundle, whole
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty", "out"]  # no .tmp or .old folders


# --- PEFT -------------------------------------------------------------------------------------------------------------
def _eptctl_and_peft_logits(source, rec, out: Path, decoder: bool = False):
    import peft
    from eptctl import data, backbones
    from eptctl.workflows.inference import load_adapter
    from eptctl.engine.encoding import encode_examples
    from eptctl.backbones.prompted import PromptedModel

    servable = load_adapter(source.reg, rec.id)
    ours = backbones.load(rec.backbone.name)
    examples = [data.Example(text=t, label=0) for t in ("A triumph.", "Dull, and far too long for its story.")]
    answers = ours.encode_answers(servable.spec.verbalizer)
    batch = ours.collate(encode_examples(ours, servable.spec, examples, answers, servable.max_length), None,
                         False).to(ours.device)
    extra = {"decoder_input_ids": torch.tensor([[0, 7, 9]] * len(examples), device=ours.device)} if decoder else {}
    with torch.no_grad():
        inputs = PromptedModel(ours, [servable.adapter])(batch)  # [P ; E(text)]
        embeds, mask, prompt_len = inputs.inputs_embeds, inputs.attention_mask, inputs.prompt_len
        expected = ours.model(inputs_embeds=embeds, attention_mask=mask, **extra).logits
        base = backbones.load(rec.backbone.name).model  # a second, untouched copy of the same random backbone
        wrapped = peft.PeftModel.from_pretrained(base, str(out))
        wrapped.eval()
        got = wrapped(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **extra).logits
        with wrapped.disable_adapter():  # the same backbone without the prompt: the prompt must matter
            plain = wrapped(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **extra).logits
    return expected, got, plain, mask, int(prompt_len[0])


def test_peft_export_of_a_causal_pt_adapter_gives_eptctl_logits(source, tmp_path):
    out = tmp_path / "peft"
    report = json.loads(ok(source.home, "export", source.pt.ref, str(out), "--format", "peft", "--registry",
                           source.url, "--json").stdout)
    assert report["task_type"] == "CAUSAL_LM" and report["dropped"] == []
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 6 and config["token_dim"] == 32
    assert config["num_transformer_submodules"] == 1 and config["base_model_name_or_path"] == "tiny-random-llama"
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    assert list(weights) == ["prompt_embeddings"] and weights["prompt_embeddings"].shape == (6, 32)
    expected, got, plain, mask, s = _eptctl_and_peft_logits(source, source.pt, out)
    assert s == 6 and got.shape == expected.shape  # PEFT's logits include the virtual positions, first
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)
    text = mask[:, s:].bool()
    assert (got[:, s:][text] - plain[text]).abs().max() > 1e-2


def test_peft_export_of_a_seq2seq_pt_adapter_prompts_the_encoder_only(source, tmp_path):
    out = tmp_path / "peft-t5"
    ok(source.home, "export", source.t5.ref, str(out), "--format", "peft", "--registry", source.url)
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    expected, got, plain, _, _ = _eptctl_and_peft_logits(source, source.t5, out, decoder=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-3


def test_peft_export_refuses_dept_and_ept_unless_lossy(source, tmp_path):
    for rec, extra in ((source.dept, ()), (source.ept, ("fusion and projection are folded",))):
        line = user_error(cli(source.home, "export", rec.ref, str(tmp_path / rec.method), "--format", "peft",
                              "--registry", source.url), "low-rank offset", "--lossy", *extra)
        assert rec.ref in line and not (tmp_path / rec.method).exists()
    out = tmp_path / "lossy"
    result = ok(source.home, "export", source.ept.ref, str(out), "--format", "peft", "--lossy", "--registry",
                source.url)
    assert "dropped the low-rank offset" in result.stderr
    assert "Lossy export" in (out / "README.md").read_text()
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        assert "offset" in f.metadata()["eptctl.lossy"]
        prompt = f.get_tensor("prompt_embeddings")
    assert torch.equal(prompt, source.reg.load_servable(source.ept)[0]["prompt"])  # P_r, exactly
    user_error(cli(source.home, "export", source.pt.ref, str(tmp_path / "x"), "--lossy", "--registry", source.url),
               "--lossy")


# --- the card ---------------------------------------------------------------------------------------------------------
def test_show_card_is_a_complete_markdown_model_card_and_the_bundle_readme(source, tmp_path):
    card = ok(source.home, "show", source.child.ref, "--card", "--registry", source.url).stdout
    for needle in ("# rt-subjectivity@1", "## Intended use", "## Task and labels", "## Backbone",
                   "## Method and config", "## Data", "## Metrics", "## Lineage", "## Trainable parameters",
                   "## How to load it",
                   source.child.backbone.embedding_sha256, source.child.run.data_fingerprint, "| prompt | 192 |",
                   f"initialised from rt-polarity@1 (`{source.pt.id}`), weight 1.000, init-weighted",
                   f"{source.child.metric('accuracy', 'test'):.4f}", "load_adapter(", "eptctl predict",
                   "eptctl import", "Examples: train 16", source.child.artifact("servable").sha256):
        assert needle in card, needle
    for label in source.reg.get_task("rt-subjectivity").labels:
        assert f"| {label} |" in card
    parent_card = ok(source.home, "show", source.pt.ref, "--card", "--registry", source.url).stdout
    assert "parent of rt-subjectivity@1" in parent_card and "`rt-polarity@prod`" in parent_card
    export_bundle(source.reg, source.child.ref, tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == card


def test_the_library_does_not_import_the_cli():
    code = ("import sys, eptctl.interop.bundle, eptctl.interop.card, eptctl.interop.peft_export; "
            "sys.exit(bool({'typer', 'rich'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_parent_links_keep_their_order_and_weights():
    # The card stores lineage as a list; import rebuilds ParentLinks from it in that order.
    from eptctl.interop.bundle import _records

    card = {"adapter": {"id": "a" * 32, "task": "t", "method": "pt", "config": {}, "params_by_group": {"prompt": 1},
                        "created_at": "2025-01-02T03:04:05.000006+00:00"},
            "task": {"name": "t", "description": "", "labels": ["a", "b"], "metric": "accuracy", "source": {},
                     "template": "{text}"},
            "backbone": {"name": "m", "revision": None, "embedding_sha256": "e" * 64, "tokenizer_sha256": "f" * 64,
                         "width": 4, "max_length": 8},
            "metrics": [], "lineage": {"parents": [{"id": "b" * 32, "weight": 0.25, "how": "init-weighted"},
                                                   {"id": "c" * 32, "weight": 0.75, "how": "init-weighted"}]}}
    new, adapter_id, created, aliases, task = _records(card)
    assert new.parents == [ParentLink("b" * 32, 0.25, "init-weighted"), ParentLink("c" * 32, 0.75, "init-weighted")]
    assert created.microsecond == 6 and created.tzinfo is not None and task.labels == ["a", "b"]


def test_peft_export_refuses_an_encoder_head_unless_lossy(tmp_path, monkeypatch):
    from registry_fixtures import new_adapter

    from eptctl.interop.peft_export import export_peft
    from registry import TaskRecord

    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path / "home"))
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.ensure_task(TaskRecord("rt-polarity", "polarity", ["rotten", "fresh"]))
    servable = {"prompt": torch.randn(4, 16), "head_weight": torch.randn(2, 16), "head_bias": torch.zeros(2)}
    rec = reg.register(new_adapter(method="pt", servable=servable,
                                   metadata={"backbone": json.dumps({"family": "encoder"})}))
    with pytest.raises(EptctlError, match="classification head") as info:
        export_peft(reg, rec.ref, tmp_path / "p")
    assert "--lossy" in info.value.hint and not (tmp_path / "p").exists()
    done = export_peft(reg, rec.ref, tmp_path / "p", lossy=True)
    assert done.config["task_type"] == "FEATURE_EXTRACTION" and done.dropped
    reg.close()
