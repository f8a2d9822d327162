"""A markdown model card for one adapter: what it is for, what it was trained on, how well it does, how to load it.

Rendered from registry records only (no torch, no model), so ``eptctl show --card`` is instant and an export bundle
carries the same card as its README.md.

Every value that comes from a record (task text, labels, answers, template, file names, tags, aliases, command line,
and whatever an imported bundle carried) is HTML-escaped (``html.escape``), since Markdown renderers keep raw HTML
live; free text shown as code goes in ``<code>`` so that the escaped characters still read right when rendered.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from eptctl.data.task_types import DEFAULT_TASK_TYPE, TASK_TYPES, task_type

METHOD_NAMES = {
    "pt": "vanilla prompt tuning (a plain soft prompt of l rows)",
    "dept": "DePT (a short soft prompt plus a low-rank offset of the input embeddings)",
    "ept": "EPT (short prompt, low-rank embedding offset, prompt fusion and gated multi-space projection)",
}
GROUP_NOTES = {
    "prompt": "soft prompt rows",
    "low_rank": "A and B of the embedding offset H = A·B",
    "fusion": "attention of the prompt over the offset rows",
    "projection": "subspace maps",
    "gate": "gate over the subspaces",
    "transfer": "attention over frozen source prompts",
    "head": "classification head",
}


def render_card(rec, task=None, parents: Sequence = (), children: Sequence = ()) -> str:
    """Markdown for ``rec`` (a registry AdapterRecord); ``task`` is its TaskRecord, ``parents``/``children`` the
    AdapterRecords of its lineage (for their refs), all optional. Every record value is HTML-escaped. Raises
    nothing of its own."""
    lines = [f"# {_text(rec.ref)}: {_text(rec.method)} adapter for task `{_text(rec.task)}`", ""]
    lines += [f"Adapter id `{_text(rec.id)}`, version {rec.version}, status {_text(rec.status)}, created "
              f"{rec.created_at:%Y-%m-%d %H:%M} UTC." + (f" {_text(rec.description)}" if rec.description else "")]
    if rec.aliases or rec.tags:
        lines += ["", "Aliases: " + (", ".join(f"`{_text(rec.task)}@{_text(a)}`" for a in rec.aliases) or "-")
                  + ". Tags: " + (", ".join(f"`{_text(t)}`" for t in rec.tags) or "-") + "."]
    lines += _intended_use(rec, task)
    lines += _task(rec, task)
    lines += _backbone(rec)
    lines += _method(rec)
    lines += _data(rec, task)
    lines += _metrics(rec)
    lines += _lineage(rec, parents, children)
    lines += _params(rec)
    lines += _files(rec)
    lines += _how_to_load(rec, _task_type(task))
    return "\n".join(lines).rstrip() + "\n"


def adapter_card(registry, ref) -> str:
    """The card of the adapter ``ref`` names, with its task and lineage read from ``registry``; ``RegistryError``
    for an unknown reference."""
    rec = registry.resolve(ref)
    return render_card(rec, registry.get_task(rec.task), registry.parents(rec), registry.children(rec))


def _task_type(task) -> str:
    """The task's type; a task this registry does not describe is taken as classification, as before 0004."""
    return getattr(task, "task_type", DEFAULT_TASK_TYPE) if task else DEFAULT_TASK_TYPE


def _intended_use(rec, task) -> list[str]:
    labels = ", ".join(_code(label) for label in task.labels) if task else "its task's labels"
    b = rec.backbone
    kind = task_type(_task_type(task))
    what = kind.card_use.format(task=_text(rec.task), labels=labels)
    how = kind.card_how
    return ["", "## Intended use", "",
            f"{what}, as a soft prompt on the frozen backbone {_code(b.name)}; the backbone itself is unchanged. "
            f"{how}", "",
            f"Use it only on the exact backbone it was trained on (embedding sha256 "
            f"`{_text(b.embedding_sha256[:16])}…`): eptctl refuses any other. Inputs longer than {b.max_length} "
            "tokens are truncated."]


def _task(rec, task) -> list[str]:
    lines = ["", "## Task and labels", ""]
    if task is None:
        return lines + [f"Task `{_text(rec.task)}` (not described in this registry)."]
    verbalizer = list((task.source or {}).get("verbalizer") or task.labels)
    lines += [f"`{_text(task.name)}`: {_text(task.description or '-')}", ""]
    if task.labels:
        lines += ["| label | answer the model scores |", "| --- | --- |"]
        lines += [f"| {_cell(label)} | {_cell(answer)} |" for label, answer in zip(task.labels, verbalizer)]
    else:
        lines += [f"A {_text(_task_type(task))} task: no labels."]
    lines += ["", f"Template: {_code(task.template)}. Metric for `@best`: {_text(task.metric)}."]
    return lines


def _backbone(rec) -> list[str]:
    b = rec.backbone
    return ["", "## Backbone", "", "| field | value |", "| --- | --- |",
            f"| name | {_cell(b.name)} |", f"| revision | {_cell(b.revision or '-')} |", f"| width | {b.width} |",
            f"| max input length | {b.max_length} |", f"| embedding sha256 | `{_cell(b.embedding_sha256)}` |",
            f"| tokenizer sha256 | `{_cell(b.tokenizer_sha256)}` |"]


def _method(rec) -> list[str]:
    cfg = {k: v for k, v in rec.config.items() if k != "schema_version"}
    method = METHOD_NAMES.get(rec.method, rec.method)
    lines = ["", "## Method and config", "", f"`{_text(rec.method)}`: {_text(method)}.", ""]
    lines += ["| option | value |", "| --- | --- |"] + [f"| {_cell(k)} | {_cell(v)} |" for k, v in cfg.items()]
    train = rec.summary.get("train_config")
    if train:
        lines += ["", "Training: " + _pairs(train) + "."]
    gate = rec.summary.get("space_weights")
    if gate:
        lines += ["", "Space weights (gate): " + ", ".join(f"{w:.3f}" for w in gate) + "."]
    return lines


def _data(rec, task) -> list[str]:
    lines = ["", "## Data", ""]
    source = {k: v for k, v in ((task.source if task else {}) or {}).items() if k != "verbalizer"}
    if source:
        lines += ["Source: " + _pairs(source) + "."]
    sizes = rec.summary.get("data_sizes")
    if sizes:
        lines += ["Examples: " + ", ".join(f"{_text(split)} {n:,}" for split, n in sizes.items()) + "."]
    if rec.run and rec.run.data_fingerprint:
        lines += [f"Data fingerprint: `{_text(rec.run.data_fingerprint)}`."]
    if rec.summary.get("truncated"):
        lines += [f"Examples cut to the max length ({rec.backbone.max_length} tokens): {rec.summary['truncated']:,}."]
    return lines if len(lines) > 3 else lines + ["Not recorded."]


def _metrics(rec) -> list[str]:
    final = sorted((m for m in rec.metrics if m.step is None), key=lambda m: (m.split, m.name))
    lines = ["", "## Metrics", ""]
    if not final:
        return lines + ["None recorded."]
    lines += ["| split | metric | value |", "| --- | --- | --- |"]
    lines += [f"| {_cell(m.split)} | {_cell(m.name)} | {m.value:.4f} |" for m in final]
    stepped = [m for m in rec.metrics if m.step is not None]
    if stepped:
        steps = sorted({m.step for m in stepped})
        lines += ["", f"Also {len(stepped)} values recorded during training at {len(steps)} step(s) "
                      f"({steps[0]}–{steps[-1]})" + (f"; best step {rec.summary['best_step']}"
                                                   if rec.summary.get("best_step") is not None else "") + "."]
    return lines


def _lineage(rec, parents, children) -> list[str]:
    lines = ["", "## Lineage", ""]
    refs = {p.id: p.ref for p in parents}
    for link in rec.parents:
        source = _text(refs.get(link.parent_id, "a deleted adapter"))
        lines.append(f"- initialised from {source} (`{_text(link.parent_id)}`), weight {link.weight:.3f}, "
                     f"{_text(link.how)}")
    lines += [f"- parent of {_text(c.ref)} (`{_text(c.id)}`)" for c in children]
    return lines if len(lines) > 3 else lines + ["Trained from scratch; no adapter descends from it."]


def _params(rec) -> list[str]:
    lines = ["", "## Trainable parameters", "", "| group | count | what |", "| --- | ---: | --- |"]
    lines += [f"| {_cell(g)} | {n:,} | {GROUP_NOTES.get(g, '')} |" for g, n in rec.params_by_group.items() if n]
    return lines + [f"| **total** | **{rec.trainable_params:,}** | |"]


def _files(rec) -> list[str]:
    lines = ["", "## Training run and files", ""]
    run = rec.run
    if run:
        versions = ", ".join(f"{_text(k)} {_text(v)}" for k, v in run.package_versions.items())
        lines += [f"Seed {run.seed}, {run.duration_s or 0:.1f} s on {_text(run.device or '-')}; command "
                  f"{_code(run.command_line)}.", "", f"Packages: {versions or '-'}.", ""]
    lines += [f"- {_text(a.kind)}: {a.size:,} bytes, sha256 `{_text(a.sha256)}`" for a in rec.artifacts]
    return lines


def _how_to_load(rec, task_type: str = DEFAULT_TASK_TYPE) -> list[str]:
    ref = _text(rec.id[:12])  # the id survives export and import; the version is per registry
    return ["", "## How to load it", "",
            f"`{ref}` is a prefix of the adapter id, valid in every registry it is imported into "
            f"(here it is also `{_text(rec.ref)}`).", "", "Command line:", "", "```bash",
            f'eptctl predict {ref} "some text"          # {_predicts(task_type)}, as JSON lines',
            f"eptctl eval {ref} --split test",
            "eptctl import PATH                      # from an export bundle folder into your registry",
            "```", "", "Python:", "", "```python",
            "from eptctl.workflows.inference import backbone_for, load_adapter, predict",
            "from registry import Registry", "",
            f'servable = load_adapter(Registry(), "{ref}")',
            'print(predict(backbone_for([servable]), servable, [("some text", None)]))',
            "```"]


def _predicts(name: str) -> str:
    kind = TASK_TYPES.get(name)
    return kind.predicts if kind is not None else "the prediction"


def _text(value) -> str:
    """``value`` as one line of Markdown text with HTML escaped: renderers keep raw HTML live, and a line break
    would end a table row or a paragraph."""
    return html.escape(str(value)).replace("\r", "\\r").replace("\n", "\\n")


def _cell(value) -> str:
    return _text(value).replace("|", "\\|")


def _code(value) -> str:
    """Free text shown as code: ``<code>`` (not backticks) so that the HTML entities of the escape render as the
    characters they stand for; a code span would show them literally."""
    return f"<code>{_text(value)}</code>"


def _pairs(values: dict) -> str:
    return ", ".join(f"{_text(k)}={_text(v)}" for k, v in values.items())
