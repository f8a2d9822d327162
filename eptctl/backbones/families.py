"""The family classes by name, and the one constructor that picks the class for a family."""

from __future__ import annotations

from eptctl.backbones.base import Backbone
from eptctl.backbones.causal import CausalBackbone
from eptctl.backbones.encoder import EncoderBackbone
from eptctl.backbones.seq2seq import Seq2SeqBackbone
from eptctl.core.errors import EptctlError

BACKBONE_CLASSES: dict[str, type[Backbone]] = {
    cls.family: cls for cls in (CausalBackbone, Seq2SeqBackbone, EncoderBackbone)
}
FAMILIES = tuple(BACKBONE_CLASSES)


def make_backbone(name: str, model, tokenizer, family: str, **kwargs) -> Backbone:
    """A frozen backbone of ``family`` (causal, seq2seq or encoder); ``kwargs`` go to ``Backbone.__init__``
    (revision, device, precision). Raises ``EptctlError`` for an unknown family."""
    if family not in BACKBONE_CLASSES:
        raise EptctlError(f"unknown backbone family {family!r}", hint=f"one of {', '.join(FAMILIES)}")
    return BACKBONE_CLASSES[family](name, model, tokenizer, **kwargs)
