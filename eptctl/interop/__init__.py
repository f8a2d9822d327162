"""Moving adapters between registries and tools: self-describing export bundles (``bundle``), markdown model cards
(``card``) and Hugging Face PEFT prompt-tuning export (``peft_export``).

May import ``eptctl.core``, ``registry``, the engine's file formats and ``eptctl.backbones`` (model names);
never ``eptctl.workflows``, ``eptctl.reporting`` or the CLI.
"""
