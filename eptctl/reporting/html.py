"""One self-contained HTML page of the registry: tasks, adapters, lineage and the plots as inline PNGs.

The page needs nothing but itself: no scripts, no stylesheets or fonts from elsewhere, images as data URIs, so it
can be mailed, archived or opened offline. This module picks the rows and formats the numbers; the markup lives in
``templates/report.html.j2``, rendered by Jinja2 with autoescaping on, so every piece of user text (task names,
labels, descriptions, tags, aliases, backbone paths, error messages) reaches the page escaped.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

from eptctl import __version__
from eptctl.core.errors import EptctlError
from eptctl.core.files import check_writable, write_atomic

HTML = (".html", ".htm")


def build_report(registry, include_archived: bool = False) -> str:
    """The HTML text of the report on ``registry`` (its ready adapters, and the archived ones too with
    ``include_archived``).

    A similarity heatmap that cannot be drawn (e.g. a damaged artifact) becomes a note on the page; any other error
    of the registry or of the plotting propagates, and ``jinja2.TemplateNotFound`` means a broken install.
    """
    from eptctl.reporting import plots

    tasks = registry.list_tasks()
    records = sorted(registry.list_adapters(include_archived=include_archived, descending=False),
                     key=lambda r: (r.task, r.version))
    everyone = {r.id: r for r in registry.list_adapters(include_archived=True)}  # parents may be archived
    metric_of = {t.name: t.metric for t in tasks}
    curves = _curves(records, metric_of, plots)
    similarity_src = similarity_error = None
    if len(records) >= 2:
        try:
            matrix = plots.similarity_matrix(registry, include_archived=include_archived)
        except EptctlError as err:  # e.g. a damaged artifact: the rest of the report is still worth having
            similarity_error = str(err)
        else:
            similarity_src = _data_uri(plots.similarity_png(matrix))
    page = _environment().get_template("report.html.j2").render(
        url=registry.display_url,
        include_archived=include_archived,
        generated=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}",
        version=__version__,
        tasks=[{"name": t.name, "description": t.description, "labels": t.labels, "metric": t.metric,
                "adapters": sum(r.task == t.name for r in records)} for t in tasks],
        adapters=[_adapter_row(r, everyone, metric_of.get(r.task, "accuracy")) for r in records],
        lineage=_lineage(records, everyone),
        curves=curves,
        similarity_src=similarity_src,
        similarity_error=similarity_error,
    )
    # markupsafe writes quotes as &#34; / &#39;; the page has always had html.escape's &quot; / &#x27; (and tests look
    # for them). Safe: a "&" from user text always comes out as "&amp;", so these two come only from the autoescape.
    return page.replace("&#34;", "&quot;").replace("&#39;", "&#x27;")


def write_report(registry, out: str | Path, include_archived: bool = False) -> Path:
    """Write the report (see :func:`build_report`) atomically to ``out``; returns the path written.

    ``out`` is checked before anything is drawn: ``EptctlError`` (one line, with a hint) when it is a folder, does not
    end in .html or .htm, lies in a missing folder or cannot be written, or when the write itself fails (e.g. a full
    disk; an existing file is then left as it was).
    """
    path = check_writable(out, HTML)
    return write_atomic(path, build_report(registry, include_archived).encode("utf-8"))


@cache
def _environment():
    import jinja2  # here, not at the top: importing eptctl.reporting stays cheap

    return jinja2.Environment(
        loader=jinja2.PackageLoader("eptctl.reporting", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a misspelt field fails loudly instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


# --- the data the template shows ------------------------------------------------------------------------------------
def _adapter_row(r, everyone, metric: str) -> dict:
    return {
        "id": r.id, "short_id": r.id[:8], "ref": r.ref, "description": r.description,
        "archived": r.status != "ready", "task": r.task, "method": r.method, "backbone": r.backbone.name,
        "metric": metric, "validation": _num(r.metric(metric, "validation")), "test": _num(r.metric(metric, "test")),
        "params": f"{r.trainable_params:,}", "created": f"{r.created_at:%Y-%m-%d %H:%M}",
        "aliases": r.aliases, "tags": r.tags,
        "parents": [{"ref": _ref(everyone, p.parent_id), "weight": f"{p.weight:.2f}", "how": p.how}
                    for p in r.parents],
    }


def _lineage(records, everyone) -> list[dict]:
    """A forest from the adapters nothing was fused into, down to their descendants; an adapter fused from several
    parents appears under each of them. Trees holding only adapters the report leaves out (archived) are dropped."""
    shown = {r.id for r in records}
    children: dict[str, list] = {}
    for rec in sorted(everyone.values(), key=lambda r: r.created_at):
        for link in rec.parents:
            if link.parent_id in everyone:
                children.setdefault(link.parent_id, []).append((rec, link))
    involved = {pid for pid in children} | {c.id for kids in children.values() for c, _ in kids}
    roots = [r for r in sorted(everyone.values(), key=lambda r: (r.task, r.version))
             if r.id in involved and not any(p.parent_id in everyone for p in r.parents)]

    def node(rec, link, path: frozenset) -> dict:
        kids = [(c, ln) for c, ln in children.get(rec.id, []) if c.id not in path]  # a guard; lineage is a DAG
        return {"ref": rec.ref, "method": rec.method,
                "link": None if link is None else {"weight": f"{link.weight:.2f}", "how": link.how},
                "children": [node(c, ln, path | {c.id}) for c, ln in kids]}

    return [node(r, None, frozenset({r.id})) for r in roots if _reaches(r.id, children, shown)]


def _curves(records, metric_of, plots) -> list[dict]:
    """Per task, its adapters' training curves drawn together (``src`` is None when none recorded a history)."""
    out = []
    for task in sorted({r.task for r in records}):
        metric = metric_of.get(task, "accuracy")
        curves = [c for r in records if r.task == task for c in [plots.curve_of(r, metric)] if c is not None]
        src = _data_uri(plots.curves_png(curves, f"{task}: {len(curves)} adapter(s)")) if curves else None
        out.append({"task": task, "metric": metric, "src": src})
    return out


# --- helpers --------------------------------------------------------------------------------------------------------
def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _ref(everyone, adapter_id: str) -> str:
    rec = everyone.get(adapter_id)
    return rec.ref if rec is not None else f"a deleted adapter ({adapter_id[:8]})"


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
