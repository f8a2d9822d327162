"""The machinery of a run, with no registry in sight: the training loop (``loop.fit``), its configuration
(``config.TrainConfig``), encoding examples for a backbone (``encoding``), scoring and metrics (``scoring``),
data-parallel helpers (``distributed``), and the two adapter file formats it owns, each with its constants, writer,
reader and validation in one module: the servable artifact (``servable``) and the training state
(``training_state``).

May import ``eptctl.core``, ``eptctl.data``, ``eptctl.methods`` and ``eptctl.backbones``; never ``registry``,
``eptctl.workflows`` or the CLI. ``config`` stays torch-free so the CLI can build its options without torch.
"""
