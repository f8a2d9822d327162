"""Pictures and pages of a registry: training curves and prompt-similarity heatmaps (``plots``, matplotlib) and the
self-contained HTML report (``html``, rendered from Jinja2 templates in ``templates/``).

May import ``eptctl.core``, ``registry`` and ``eptctl.workflows`` (to load stored prompts); never the CLI.
"""
