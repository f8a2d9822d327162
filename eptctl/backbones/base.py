"""The interface every model family implements, and what the families share: encoding, batching, and the path from
a batch to the family's loss and scores. The family classes (``causal``, ``seq2seq``, ``encoder`` modules) add the
loss and the label scoring.

One input layout for all families, built by the one forward pass ``prompted.PromptedModel``: each row is
``[P ; E + H[pos]]`` right-padded, where ``P`` is the row's prompt (``s`` rows), ``E`` the frozen token embeddings of
the row's text and ``H[pos]`` the offset at each token's position within its own text (pads get none). Batches are
padded to their own longest row, never to ``n``.

- causal:  text = template prefix + answer; loss on the answer tokens; a label's score is the mean log-probability
           of its answer tokens after the prefix (one batched pass; a single pass over the prefixes when every answer
           is one token).
- seq2seq: the prompt goes to the encoder; answers are decoder labels; the encoder runs once per row and the decoder
           once per (row, label).
- encoder: masked mean of the last hidden states -> the adapter's linear head; scores are log-softmax of the head.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from eptctl.backbones.prompted import PromptedInputs, PromptedModel, PromptSource
from eptctl.core.errors import ConfigError, EptctlError

__all__ = ["Backbone", "Batch", "EncodedExample", "HostRows", "PromptSource", "PromptedInputs", "PromptedModel",
           "TaskEncoding", "regroup", "to_device"]


@dataclass
class EncodedExample:
    input_ids: list[int]  # causal: template prefix; seq2seq/encoder: the encoder input
    label: int
    truncated: bool = False
    target_ids: list[int] | None = None  # generation and text-to-text regression: the answer's tokens (with eos)
    target: str | None = None  # generation: the reference text, for metrics
    value: float | None = None  # regression: the number


@dataclass
class TaskEncoding:
    """Token ids of each label's answer for one task on one backbone."""

    answers: list[list[int]]

    @property
    def single_token(self) -> bool:
        return all(len(a) == 1 for a in self.answers)


@dataclass(frozen=True)
class HostRows:
    """Per-row bookkeeping of a batch as Python ints, computed once on the CPU in ``collate`` (before the batch moves
    to the device), so that the hot paths index with host numbers and never read a device scalar.

    ``lengths`` [b]: real tokens per row (causal training: prefix + answer); ``labels`` [b]; ``answer_start`` and
    ``answer_len`` [b] (causal training only, else None); ``adapter_index`` [b] (mixed-task batches, else None).
    """

    lengths: list[int]
    labels: list[int]
    answer_start: list[int] | None = None
    answer_len: list[int] | None = None
    adapter_index: list[int] | None = None

    @property
    def inputs(self) -> list[int]:
        """[b] tokens per row that get an offset: the prefix where an answer is appended, else the whole row."""
        return self.answer_start if self.answer_start is not None else self.lengths

    @property
    def sources(self) -> list[int]:
        """[b] each row's prompt source (0 for all without ``adapter_index``)."""
        return self.adapter_index if self.adapter_index is not None else [0] * len(self.lengths)

    @classmethod
    def read(cls, batch: Batch) -> HostRows:
        """The bookkeeping of a batch built without ``collate``: one read of its small tensors (a sync on a GPU)."""
        def host(t):
            return None if t is None else [int(v) for v in t.tolist()]

        return cls(host(batch.attention_mask.sum(dim=1)), host(batch.labels), host(batch.answer_start),
                   host(batch.answer_len), host(batch.adapter_index))


@dataclass
class Batch:
    input_ids: torch.Tensor  # [b, L] right-padded text tokens (causal training: prefix + answer)
    attention_mask: torch.Tensor  # [b, L]
    labels: torch.Tensor  # [b] class indices
    answer_start: torch.Tensor | None = None  # [b] causal training: index of the first answer token in the text
    answer_len: torch.Tensor | None = None  # [b]
    adapter_index: torch.Tensor | None = None  # [b] mixed-task batches: which adapter each row uses
    targets: list[list[int]] | None = None  # training on target texts: each row's answer tokens (seq2seq labels)
    values: torch.Tensor | None = None  # [b] regression targets (encoder head)
    meta: dict = field(default_factory=dict)
    host: HostRows | None = None  # the same rows' bookkeeping as Python ints (``collate`` fills it)

    def rows(self) -> HostRows:
        """``host``, or (for a batch built by hand) the same numbers read once from the tensors."""
        if self.host is None:
            self.host = HostRows.read(self)
        return self.host

    def to(self, device: torch.device) -> Batch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**moved)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class Backbone:
    """A frozen Hugging Face model of one family with its tokenizer; subclasses implement one family each.

    The interface a workflow uses: ``encode_answers``, ``encode``, ``collate`` (token ids in, padded batches out),
    ``loss`` (training), ``loss_terms`` (data-parallel weighting), ``score`` (label scores) and ``generate``. Each
    of ``loss``, ``score`` and ``generate`` calls the EPT forward pass ``PromptedModel(self, sources)(batch)`` once
    and runs the frozen model on its ``PromptedInputs``. A subclass sets ``family`` and implements ``_answer_ids``,
    ``_lm_loss``, ``loss_terms`` and ``_family_scores``.
    """

    family: str = ""
    answer_in_input = False  # causal: the answer tokens follow the prefix in the same row
    has_head = False  # encoder: a trainable classification head replaces answer scoring
    can_generate = True  # encoder: no decoder, so no generation and no text-to-text regression

    def __init__(self, name: str, model, tokenizer, revision: str | None = None,
                 device: str | torch.device | None = None, precision: str = "fp32"):
        self.name = name
        self.tokenizer = tokenizer
        self.revision = revision
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.requires_grad_(False)
        model.eval()  # no dropout in the frozen backbone: training and inference see the same function
        self._fingerprint = {**_fingerprint(name, revision, model, tokenizer), "family": self.family}
        self.precision = precision
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model = model.to(device=self.device, dtype=dtype)
        if tokenizer.pad_token_id is None:  # e.g. Llama tokenizers: padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token

    # --- facts --------------------------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """d: the width of the input embeddings."""
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def max_positions(self) -> int | None:
        """How many positions (prompt + text) the model was built for, or None where it has no such limit (T5's
        relative positions)."""
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def check_length(self, prompt_length: int, max_length: int) -> None:
        """Refuse (``ConfigError``) an adapter whose ``prompt_length`` prompt rows plus ``max_length`` text tokens
        exceed the model's positions: the failure would otherwise come deep inside the model, after the work."""
        limit = self.max_positions
        if limit is not None and prompt_length + max_length > limit:
            raise ConfigError(
                f"--max-length {max_length} plus the {prompt_length} prompt tokens exceeds the {limit} positions of "
                f"{self.name}",
                hint=f"use --max-length {max(1, limit - prompt_length)} or less with this prompt length",
            )

    def fingerprint(self, max_length: int | None = None) -> dict:
        """name, revision, embedding/tokenizer sha256, width, family and ``max_length``: what an adapter is tied to."""
        return {**self._fingerprint, "max_length": max_length}

    def backbone_state_hash(self) -> str:
        """sha256 over every backbone tensor, to prove training leaves the backbone bit-identical."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # --- encoding -----------------------------------------------------------------------------------------------------
    def _answer_ids(self, word: str) -> list[int]:
        """Token ids of one label's answer (empty for families without answers)."""
        raise NotImplementedError

    def _add_special_tokens(self) -> bool:
        return True

    def encode_answers(self, verbalizer: Sequence[str]) -> TaskEncoding:
        """Token ids of each label's answer; raises ``EptctlError`` for an answer that encodes to no tokens."""
        answers = []
        for word in verbalizer:
            ids = self._answer_ids(word)
            if not self.has_head and not ids:
                raise EptctlError(f"answer {word!r} encodes to no tokens", hint="give every label a non-empty verbalizer")
            answers.append(ids)
        return TaskEncoding(answers)

    def _target_ids(self, text: str) -> list[int]:
        """Token ids of one target text as the model should produce it, ending with the eos token."""
        raise NotImplementedError

    def encode_targets(self, targets: Sequence[str], max_target_length: int) -> list[list[int]]:
        """Token ids of each target text, at most ``max_target_length`` tokens, always ending with eos (a cut target
        keeps its head). Raises ``EptctlError`` on a family that cannot generate."""
        if not self.can_generate:
            raise EptctlError(f"{self.name} is an encoder-only model and cannot generate text",
                              hint="use a causal or seq2seq backbone for generation tasks")
        eos = self.tokenizer.eos_token_id
        out = []
        for text in targets:
            ids = self._target_ids(text)
            if len(ids) > max_target_length:
                ids = ids[: max_target_length - 1] + [eos]
            out.append(ids)
        return out

    def token_ids(self, texts: Sequence[str], special: bool = True) -> list[list[int]]:
        """Token ids of each text, with the special tokens this family adds to an input (``special``)."""
        add = self._add_special_tokens() if special else False
        return self.tokenizer(list(texts), add_special_tokens=add)["input_ids"]

    def text_room(self, max_length: int, answers: TaskEncoding, label: int) -> int:
        """Input tokens a row may have: ``max_length``, less its answer where the answer is part of the input.
        Tasks without labels (no answers) keep all ``max_length``: their targets are bounded separately."""
        if not answers.answers:
            return max_length
        return max_length - (len(answers.answers[label]) if self.answer_in_input else 0)

    def encode(self, texts: Sequence[str], labels: Sequence[int], answers: TaskEncoding, max_length: int
               ) -> list[EncodedExample]:
        """Tokenize formatted prompts. A row longer than ``max_length`` (causal: answer included) keeps its head and
        its last few tokens (the template's answer cue) and is marked ``truncated``."""
        out = []
        for ids, label in zip(self.token_ids(texts), labels):
            room = self.text_room(max_length, answers, label)
            truncated = len(ids) > room
            if truncated:
                # Keep the head of the text and the final tokens (the template's question/answer cue).
                tail = min(8, room // 4)
                ids = ids[: room - tail] + ids[len(ids) - tail:] if tail else ids[:room]
            out.append(EncodedExample(ids, int(label), truncated))
        return out

    def collate(self, examples: Sequence[EncodedExample], answers: TaskEncoding | None, train: bool,
                adapter_index: Sequence[int] | None = None) -> Batch:
        """Right-pad to the longest row of this batch. Causal training rows carry their answer tokens: the label's
        verbalizer answer, or the row's own target tokens (generation, text-to-text regression)."""
        rows, starts, lens = [], [], []
        for ex in examples:
            ids = list(ex.input_ids)
            if train and self.answer_in_input:
                answer = ex.target_ids if ex.target_ids is not None else answers.answers[ex.label]
                starts.append(len(ids))
                lens.append(len(answer))
                ids = ids + answer
            rows.append(ids)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        has_targets = train and any(ex.target_ids is not None for ex in examples)
        host = HostRows([len(r) for r in rows], [ex.label for ex in examples], starts or None, lens or None,
                        None if adapter_index is None else [int(a) for a in adapter_index])
        return Batch(
            input_ids=input_ids,
            attention_mask=mask,
            labels=torch.tensor([ex.label for ex in examples], dtype=torch.long),
            answer_start=torch.tensor(starts) if starts else None,
            answer_len=torch.tensor(lens) if lens else None,
            adapter_index=None if adapter_index is None else torch.tensor(list(adapter_index), dtype=torch.long),
            targets=[list(ex.target_ids or []) for ex in examples] if has_targets else None,
            values=torch.tensor([float(ex.value) for ex in examples]) if train and examples[0].value is not None
            else None,
            host=host,
        )

    # --- loss -------------------------------------------------------------------------------------------------------
    def loss(self, adapter, batch: Batch, answers: TaskEncoding, objective: str = "lm") -> torch.Tensor:
        """Scalar training loss of ``adapter`` on ``batch``.

        ``lm``: cross-entropy of the answer tokens (the spec's default; the head's cross-entropy on encoders).
        ``classify``: cross-entropy over the length-normalised label scores, i.e. the prediction rule itself; useful
        when answer continuations are unlearnable noise (tiny random decoders) or answers differ in length.
        """
        if objective == "classify" and not self.has_head:
            batch = self._scoring_batch(batch)
            scores = torch.stack(self._label_scores([adapter], batch, [answers]))
            return F.cross_entropy(scores, batch.labels.to(scores.device))
        return self._lm_loss(adapter, batch, answers, PromptedModel(self, [adapter])(batch))

    def _lm_loss(self, adapter, batch: Batch, answers: TaskEncoding, inputs: PromptedInputs) -> torch.Tensor:
        """The ``lm`` objective's scalar loss on the forward pass's ``inputs``."""
        raise NotImplementedError

    def loss_terms(self, batch: Batch, answers: TaskEncoding, objective: str = "lm") -> int:
        """How many terms ``loss`` averages over (answer tokens for lm on decoders, else rows): data parallelism
        weights each rank's loss by it, so that the ranks together give the mean over the global batch."""
        return len(batch)

    def _scoring_batch(self, batch: Batch) -> Batch:
        """Strip the appended answers from a causal training batch, leaving the prefixes."""
        if batch.answer_start is None:
            return batch
        rows = batch.rows()
        columns = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)
        prefix = columns.unsqueeze(0) < batch.answer_start.unsqueeze(1)  # [b, L] masks, not a loop over device rows
        ids = torch.where(prefix, batch.input_ids, self.tokenizer.pad_token_id)
        mask = batch.attention_mask * prefix
        width = max(rows.answer_start)  # host ints from collate
        host = HostRows(list(rows.answer_start), rows.labels, adapter_index=rows.adapter_index)
        return Batch(ids[:, :width], mask[:, :width], batch.labels, adapter_index=batch.adapter_index, host=host)

    # --- scoring ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, sources: Sequence[PromptSource], batch: Batch, answers: Sequence[TaskEncoding]) -> list[torch.Tensor]:
        """Length-normalised log-likelihood of every label's answer, per row: a list of [num_labels] tensors.

        ``answers[a]`` belongs to ``sources[a]``; rows pick theirs through ``batch.adapter_index`` (0 if absent).
        Raises ``EptctlError`` for several sources without ``adapter_index``.
        """
        return self._label_scores(sources, batch, answers)

    def _label_scores(self, sources, batch: Batch, answers: Sequence[TaskEncoding]) -> list[torch.Tensor]:
        index = batch.rows().sources  # host ints: no read of the device's adapter_index per row
        inputs = PromptedModel(self, sources)(batch)  # raises for several sources without adapter_index
        row_answers = [answers[a].answers for a in index]
        return self._family_scores(sources, batch, inputs, index, row_answers)

    def _family_scores(self, sources, batch: Batch, inputs: PromptedInputs, index: torch.Tensor,
                       row_answers: list) -> list[torch.Tensor]:
        """Each row's [num_labels] scores from the forward pass's ``inputs``; ``index`` (b host ints) picks its
        source."""
        raise NotImplementedError

    # --- generation ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, sources: Sequence[PromptSource], batch: Batch, options, limits=None) -> list[list[int]]:
        """Token ids generated after each row's input with its prompt (``decoding.GenerationOptions``); rows of a
        mixed batch pick their source through ``batch.adapter_index``; ``limits`` caps each row's new tokens. One
        backbone pass per decoding step. Raises ``EptctlError`` on a family without a decoder."""
        raise EptctlError(f"{self.name} is an encoder-only model and cannot generate text",
                          hint="use a causal or seq2seq backbone for generation tasks")

    def _decoder_labels(self, answers: Sequence[Sequence[int]]) -> torch.Tensor:
        """[rows, longest answer] token ids, -100 where a shorter answer has none."""
        width = max(len(a) for a in answers)
        labels = torch.full((len(answers), width), -100, dtype=torch.long)  # built on the host, copied once
        for i, a in enumerate(answers):
            labels[i, : len(a)] = torch.tensor(a)
        return to_device(labels, self.device)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host-built index tensor on ``device`` without waiting for the device (the copy is queued on the stream)."""
    return t.to(device, non_blocking=True)


def regroup(flat: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor]:
    out, k = [], 0
    for n in sizes:
        out.append(torch.stack(flat[k: k + n]))
        k += n
    return out


def _fingerprint(name, revision, model, tokenizer) -> dict:
    weight = model.get_input_embeddings().weight.detach().float().cpu().contiguous()
    emb_hash = hashlib.sha256(weight.numpy().tobytes()).hexdigest()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tok_text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return {
        "name": name,
        "revision": revision,
        "embedding_sha256": emb_hash,
        "tokenizer_sha256": hashlib.sha256(tok_text.encode()).hexdigest(),
        "width": int(weight.shape[1]),
    }
