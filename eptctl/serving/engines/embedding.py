"""The router's side of a remote engine: a causal backbone without its transformer.

It holds the tokenizer and the input-embedding table only (read from the model's safetensors files, not the whole
model), so eptctl builds every row's ``[P_r; E(x) + H]`` exactly as its own forward pass does
(``backbones.prompted.PromptedModel``) and hands the rows to a remote LM that runs the frozen transformer. Encoding,
truncation, templates and the task-type table stay eptctl's own (``workflows.inference.predict_mixed`` runs on this
backbone unchanged); only ``generate`` and the label scores go over the wire.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from eptctl.backbones.causal import CausalBackbone
from eptctl.core.errors import EptctlError
from eptctl.serving.engine import Unsupported


class RemoteLM(Protocol):
    """What runs the transformer for :class:`EmbeddingBackbone`: each row is a ``[n_i, d]`` float tensor of input
    embeddings (prompt rows first)."""

    def generate_rows(self, rows: Sequence[torch.Tensor], options, limits: Sequence[int]) -> list[list[int]]:
        """Generated token ids per row (eos excluded), decoded with ``decoding.GenerationOptions`` ``options``."""

    def next_token_logprobs(self, rows: Sequence[torch.Tensor], token_ids: Sequence[Sequence[int]]
                            ) -> list[list[float]]:
        """Per row, the raw log-probability of each of its ``token_ids`` as the next token."""


class EmbeddingTable(torch.nn.Module):
    """A model reduced to its input embeddings: what ``Backbone`` and ``PromptedModel`` read of a model
    (``get_input_embeddings``, ``config``). ``weight`` [vocab, d]."""

    def __init__(self, weight: torch.Tensor, config):
        super().__init__()
        self.embed = torch.nn.Embedding.from_pretrained(weight, freeze=True)
        self.config = config

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embed


class EmbeddingBackbone(CausalBackbone):
    """A causal backbone whose transformer runs in ``remote`` (a :class:`RemoteLM`); the weights here are the input
    embeddings alone. Its fingerprint equals the full backbone's (same table, same tokenizer), so adapters trained on
    the full model pass the registry's backbone check. Training on it raises ``EptctlError``."""

    def __init__(self, name: str, table: EmbeddingTable, tokenizer, remote: RemoteLM | None = None,
                 revision: str | None = None):
        super().__init__(name, table, tokenizer, revision=revision, device="cpu", precision="fp32")
        self.remote = remote

    def rows(self, sources, batch) -> list[torch.Tensor]:
        """Each row's ``[P_r; E(x) + H]`` as a ``[s + n_i, d]`` fp32 tensor, without padding (``PromptedModel``)."""
        from eptctl.backbones.prompted import PromptedModel

        return _unpadded(PromptedModel(self, sources)(batch), batch)

    @torch.no_grad()
    def generate(self, sources, batch, options, limits=None) -> list[list[int]]:
        """Token ids the remote LM writes after each row (``Backbone.generate``'s contract)."""
        caps = list(limits) if limits is not None else [options.max_new_tokens] * len(batch)
        return self.remote.generate_rows(self.rows(sources, batch), options, caps)

    def _family_scores(self, sources, batch, inputs, index, row_answers) -> list[torch.Tensor]:
        """Single-token answers only: the log-probability of each answer token after the row (what
        ``CausalBackbone._next_token_scores`` computes). A multi-token answer is refused (``Unsupported``)."""
        if any(len(a) != 1 for answers in row_answers for a in answers):
            raise Unsupported("a label's answer is several tokens long: the vLLM engine scores single-token answers "
                              "only", hint="serve this adapter with the local engine (eptctl serve without --engine)")
        scores = self.remote.next_token_logprobs(_unpadded(inputs, batch),
                                                 [[a[0] for a in answers] for answers in row_answers])
        return [torch.tensor(s, dtype=torch.float32) for s in scores]

    def _lm_loss(self, adapter, batch, answers, inputs):
        raise EptctlError(f"{self.name} is loaded as an embedding table for a remote engine; it cannot train",
                          hint="train with eptctl train (the full backbone)")


def _unpadded(inputs, batch) -> list[torch.Tensor]:
    """Each row of the forward pass's ``inputs`` (``PromptedInputs``) without its padding: ``[s_i + n_i, d]``."""
    ends = [s + n for s, n in zip(inputs.prompt_lengths, batch.rows().lengths)]
    return [inputs.inputs_embeds[i, :end].contiguous() for i, end in enumerate(ends)]


def load_embedding_backbone(name: str, remote: RemoteLM | None = None) -> EmbeddingBackbone:
    """The tokenizer and input-embedding table of causal model ``name`` (embedded name or local folder), read from
    its safetensors files without building the model. Raises ``EptctlError`` for an encoder or seq2seq model, a
    folder without safetensors, or a model whose embedding table is not found."""
    from transformers import AutoConfig, AutoTokenizer

    from eptctl import backbones

    source, revision = backbones.resolve_source(name)
    folder = Path(source)
    if not folder.is_dir():
        raise EptctlError(f"{name} is not a local model: the vLLM engine reads the embedding table from a folder",
                          hint="download it first (huggingface-cli download ...) and pass the folder")
    config = AutoConfig.from_pretrained(source)
    family = backbones.detect_family(config)
    if family != "causal":
        kind = {"encoder": "an encoder", "seq2seq": "an encoder-decoder (seq2seq)"}.get(family, f"a {family}")
        raise EptctlError(f"{name} is {kind} model: the vLLM engine serves causal (decoder-only) LMs only",
                          hint="serve encoder and seq2seq backbones with the local engine (eptctl serve without "
                               "--engine)")
    weight = embedding_weight(folder, config)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return EmbeddingBackbone(backbones.canonical_name(name), EmbeddingTable(weight, config), tokenizer, remote,
                             revision=revision)


def embedding_weight(folder: Path, config) -> torch.Tensor:
    """The input-embedding matrix [vocab, d] (fp32) of the model in ``folder``: the parameter name comes from the
    architecture built on the meta device (no memory), the tensor from the safetensors file that holds it."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    table = skeleton.get_input_embeddings()
    module = next(n for n, m in skeleton.named_modules() if m is table)
    wanted = f"{module}.weight"
    files = _weight_files(folder)
    for file, keys in files.items():
        # a checkpoint may store the name with or without the model's prefix (``model.``)
        key = next((k for k in keys if k == wanted or wanted.endswith("." + k) or k.endswith("." + wanted)), None)
        if key is not None:
            with safe_open(str(folder / file), "pt") as handle:
                return handle.get_tensor(key).float()
    raise EptctlError(f"no tensor {wanted} in the safetensors files of {folder}",
                      hint="pass a folder saved with save_pretrained (safetensors)")


def _weight_files(folder: Path) -> dict[str, list[str]]:
    """{safetensors file name: its tensor names} (from the index of a sharded checkpoint, else the files)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files: dict[str, list[str]] = {}
        for key, file in json.loads(index.read_text())["weight_map"].items():
            files.setdefault(file, []).append(key)
        return files
    from safetensors import safe_open

    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            found[path.name] = list(handle.keys())
    if not found:
        raise EptctlError(f"{folder} holds no .safetensors weights", hint="save the model with save_pretrained")
    return found
