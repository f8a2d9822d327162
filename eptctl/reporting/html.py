"""One self-contained HTML page of the registry: tasks, adapters, lineage and the plots as inline PNGs.

The page needs nothing but itself: no scripts, no stylesheets or fonts from elsewhere, images as data URIs, so it
can be mailed, archived or opened offline. Every piece of user text (task names, labels, descriptions, tags, aliases,
backbone paths) goes through ``html.escape``.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from eptctl import __version__
from eptctl.core.errors import EptctlError
from eptctl.core.files import check_writable, write_atomic

HTML = (".html", ".htm")

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta, .note { color: #666; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 92%; } .archived { color: #999; } .nw { white-space: nowrap; }
ul.lineage, ul.lineage ul { list-style: none; padding-left: 1.4em; border-left: 1px dotted #bbb; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def build_report(registry, include_archived: bool = False) -> str:
    """The HTML text of the report on ``registry``."""
    from eptctl.reporting import plots

    tasks = registry.list_tasks()
    records = sorted(registry.list_adapters(include_archived=include_archived, descending=False),
                     key=lambda r: (r.task, r.version))
    everyone = {r.id: r for r in registry.list_adapters(include_archived=True)}  # parents may be archived
    metric_of = {t.name: t.metric for t in tasks}
    counts = {t.name: sum(r.task == t.name for r in records) for t in tasks}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>eptctl registry report</title><style>{STYLE}</style></head><body>",
        "<h1>eptctl registry</h1>",
        f'<p class="meta">{escape(registry.display_url)} · {len(records)} adapter(s) in {len(tasks)} task(s)'
        f"{' (archived included)' if include_archived else ''} · generated "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by eptctl {escape(__version__)}</p>",
        _tasks_section(tasks, counts),
        _adapters_section(records, everyone, metric_of),
        _lineage_section(records, everyone),
        _curves_section(records, metric_of, plots),
        _similarity_section(registry, records, include_archived, plots),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(registry, out: str | Path, include_archived: bool = False) -> Path:
    """Write the report atomically to ``out`` (checked before anything is drawn); returns the path."""
    path = check_writable(out, HTML)
    return write_atomic(path, build_report(registry, include_archived).encode("utf-8"))


# --- sections -------------------------------------------------------------------------------------------------------
def _tasks_section(tasks, counts: dict[str, int]) -> str:
    if not tasks:
        return '<h2 id="tasks-heading">Tasks</h2><p class="note">No task yet: train one with eptctl train.</p>'
    rows = "".join(
        f"<tr><td><code>{escape(t.name)}</code></td><td>{escape(t.description)}</td>"
        f"<td>{escape(', '.join(t.labels))}</td><td>{escape(t.metric)}</td>"
        f'<td class="num">{counts.get(t.name, 0)}</td></tr>'
        for t in tasks
    )
    return ('<h2 id="tasks-heading">Tasks</h2><table id="tasks"><thead><tr><th>task</th><th>description</th>'
            f"<th>labels</th><th>metric</th><th>adapters</th></tr></thead><tbody>{rows}</tbody></table>")


_CLASSES = {2: "nw", 4: "nw", 6: "num", 7: "num", 8: "num", 9: "nw"}  # by column: numbers, unbroken names and dates


def _adapters_section(records, everyone, metric_of) -> str:
    head = ("ref", "id", "task", "method", "backbone", "metric", "validation", "test", "trainable params", "created",
            "aliases", "tags", "parents")
    rows = []
    for r in records:
        metric = metric_of.get(r.task, "accuracy")
        parents = "<br>".join(
            f"{escape(_ref(everyone, p.parent_id))} ×{p.weight:.2f} ({escape(p.how)})" for p in r.parents)
        cells = [
            f"<code>{escape(r.ref)}</code>" + (f'<br><small>{escape(r.description)}</small>' if r.description else ""),
            f"<code>{r.id[:8]}</code>", escape(r.task), escape(r.method),
            escape(r.backbone.name), escape(metric), _num(r.metric(metric, "validation")),
            _num(r.metric(metric, "test")), f"{r.trainable_params:,}", f"{r.created_at:%Y-%m-%d %H:%M}",
            escape(", ".join(r.aliases)), escape(", ".join(r.tags)), parents,
        ]
        tds = "".join(f'<td class="{_CLASSES[i]}">{c}</td>' if i in _CLASSES else f"<td>{c}</td>"
                      for i, c in enumerate(cells))
        status = ' class="archived" title="archived"' if r.status != "ready" else ""
        rows.append(f'<tr id="adapter-{r.id}"{status}>{tds}</tr>')
    table = ('<table id="adapters"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
             + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    note = "" if records else '<p class="note">No adapters yet.</p>'
    return f'<h2 id="adapters-heading">Adapters</h2>{table}{note}'


def _lineage_section(records, everyone) -> str:
    """A forest from the adapters nothing was fused into, down to their descendants; an adapter fused from several
    parents appears under each of them."""
    shown = {r.id for r in records}
    children: dict[str, list] = {}
    for rec in sorted(everyone.values(), key=lambda r: r.created_at):
        for link in rec.parents:
            if link.parent_id in everyone:
                children.setdefault(link.parent_id, []).append((rec, link))
    involved = {pid for pid in children} | {c.id for kids in children.values() for c, _ in kids}
    roots = [r for r in sorted(everyone.values(), key=lambda r: (r.task, r.version))
             if r.id in involved and not any(p.parent_id in everyone for p in r.parents)]
    roots = [r for r in roots if _reaches(r.id, children, shown)]
    title = '<h2 id="lineage">Lineage</h2>'
    if not roots:
        return title + '<p class="note">No adapter was initialised from another one.</p>'

    def node(rec, link, path: frozenset) -> str:
        how = "" if link is None else f" ← ×{link.weight:.2f} ({escape(link.how)})"
        label = f"<code>{escape(rec.ref)}</code> {escape(rec.method)}{how}"
        kids = [(c, ln) for c, ln in children.get(rec.id, []) if c.id not in path]  # a guard; lineage is a DAG
        inner = "".join(node(c, ln, path | {c.id}) for c, ln in kids)
        return f"<li>{label}" + (f"<ul>{inner}</ul>" if inner else "") + "</li>"

    items = "".join(node(r, None, frozenset({r.id})) for r in roots)
    return (title + '<p class="note">Each adapter is listed under the adapters it was initialised from, with the '
            f'fusion weight.</p><ul class="lineage">{items}</ul>')


def _curves_section(records, metric_of, plots) -> str:
    parts = ['<h2 id="curves">Training curves</h2>']
    for task in sorted({r.task for r in records}):
        curves = [c for r in records if r.task == task
                  for c in [plots.curve_of(r, metric_of.get(task, "accuracy"))] if c is not None]
        if not curves:
            parts.append(f'<p class="note">{escape(task)}: no adapter recorded a training history.</p>')
            continue
        png = plots.curves_png(curves, f"{task}: {len(curves)} adapter(s)")
        parts.append(_figure(png, f"training curves of {task}",
                             f"{task}: training loss and validation {metric_of.get(task, 'accuracy')} by step"))
    if len(parts) == 1:
        parts.append('<p class="note">No adapters yet.</p>')
    return "".join(parts)


def _similarity_section(registry, records, include_archived: bool, plots) -> str:
    title = '<h2 id="similarity">Prompt similarity</h2>'
    if len(records) < 2:
        return title + '<p class="note">Needs two or more adapters.</p>'
    try:
        matrix = plots.similarity_matrix(registry, include_archived=include_archived)
    except EptctlError as err:  # e.g. a damaged artifact: the rest of the report is still worth having
        return title + f'<p class="note">Not drawn: {escape(str(err))}</p>'
    caption = ("Cosine similarity of the materialized prompts (mean row when lengths differ). Adapters are grouped "
               "by backbone; cells across backbones are left blank (hatched): their embedding spaces are not "
               "comparable.")
    return title + _figure(plots.similarity_png(matrix), "prompt cosine similarity heatmap", caption)


# --- helpers --------------------------------------------------------------------------------------------------------
def _figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _ref(everyone, adapter_id: str) -> str:
    rec = everyone.get(adapter_id)
    return rec.ref if rec is not None else adapter_id[:8]


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _reaches(root_id: str, children, shown: set[str]) -> bool:
    """Whether the tree under ``root_id`` holds an adapter the report shows (archived-only trees are left out)."""
    stack, seen = [root_id], set()
    while stack:
        current = stack.pop()
        if current in shown:
            return True
        if current not in seen:
            seen.add(current)
            stack.extend(c.id for c, _ in children.get(current, []))
    return False
