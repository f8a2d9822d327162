"""From an OpenAI-API request to what the engine runs: the adapter ``model`` names, and each prompt's token ids.

``model`` is an adapter reference (``task@latest``, ``task@3``, an alias, an id prefix) or that reference with
``:raw``:

- ``REF``: each prompt string fills the adapter's stored template, as ``eptctl predict`` does (the engine's
  ``encode``); classification and regression adapters answer with their label or number, generation adapters
  decode. Token-id prompts have no template to fill: they need ``REF:raw``.
- ``REF:raw``: the prompt goes verbatim after the soft prompt, and every adapter decodes (or scores the prompt, with
  ``echo``): a string is tokenized as a plain text (the tokenizer's own special tokens, as vLLM tokenizes a
  completion prompt; no template), token ids are taken as given.

Chat: with ``REF`` the last message (a user's) is the text for the adapter's template, as a task adapter has no place
for a conversation (earlier messages and the system message do not reach it); with ``REF:raw`` the whole
conversation is rendered by the backbone's chat template (or ``--chat-template``) with the assistant's generation
prompt and put verbatim after the soft prompt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from eptctl.core.errors import EptctlError
from eptctl.data.text import clean_inputs
from eptctl.serving.adapters import AdapterNotFound, BackboneMismatch
from eptctl.serving.errors import ApiError
from eptctl.serving.openai_schema import ChatMessage
from eptctl.workflows.inference import ServableAdapter, check_pair

RAW = ":raw"
NO_TEMPLATE_HINT = ("start the server with --chat-template FILE (a Jinja chat template), use model REF (the last "
                    "message fills the adapter's template), or format the conversation yourself on "
                    "/v1/completions with model REF:raw")


@dataclass(frozen=True)
class Target:
    """The adapter a request's ``model`` names, and whether the prompt goes verbatim after its soft prompt."""

    model: str  # as the client sent it (echoed in the answer)
    servable: ServableAdapter
    raw: bool

    @property
    def ref(self) -> str:
        """The adapter's registry reference (``task@3``): its metric label."""
        return self.servable.record.ref

    @property
    def decodes(self) -> bool:
        """Whether the answer is decoded text (raw prompts, generation adapters) rather than a scored label or a
        number read by ``engine.predict``."""
        return self.raw or self.servable.spec.strategy.decodes_text

    @property
    def soft_prompt_tokens(self) -> int:
        """s: the soft prompt's positions before the text."""
        return int(self.servable.adapter.prompt.shape[0])


@dataclass(frozen=True)
class Prompt:
    """One prompt: the client's ``text`` (None for token ids; for ``REF`` scoring: what fills the template) and the
    token ids after the soft prompt (empty where ``engine.predict`` encodes the text itself)."""

    text: str | None
    ids: tuple[int, ...] = ()


async def resolve(state, model: str) -> Target:
    """The adapter ``model`` names: 404 unknown, 409 trained on another backbone (``param`` "model")."""
    raw = model.endswith(RAW)
    ref = model[: -len(RAW)] if raw else model
    try:
        servable = await asyncio.to_thread(state.cache.get, ref)
    except AdapterNotFound as err:
        raise ApiError(404, f"model {model!r}: {err.message}", err.hint or "GET /v1/models lists the models",
                       param="model", code="model_not_found") from None
    except BackboneMismatch as err:
        raise ApiError(409, err.message, err.hint or "", param="model", code="backbone_mismatch") from None
    return Target(model, servable, raw)


def prompt_list(prompt: str | list) -> list[str | list[int]]:
    """The four forms of ``prompt`` as a list of strings and token-id lists; 400 for an empty one."""
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and isinstance(prompt[0], int):
        items = [prompt]
    else:
        items = list(prompt)
    if not items:
        raise ApiError(400, "prompt is an empty list", "send a string, strings, token ids or lists of token ids",
                       param="prompt", code="invalid_value")
    return items


def check_sizes(items: Sequence[str | list[int]], config) -> None:
    """413 for more prompts than ``--max-inputs`` or a prompt over ``--max-text-chars`` characters (or tokens)."""
    if len(items) > config.max_inputs:
        raise ApiError(413, f"{len(items)} prompts in one request; the limit is {config.max_inputs}",
                       "split the request, or start the server with a larger --max-inputs", param="prompt")
    for n, item in enumerate(items, start=1):
        if len(item) > config.max_text_chars:
            raise ApiError(413, f"prompt {n} has {len(item)} characters or tokens; the limit is "
                                f"{config.max_text_chars}", "shorten it, or start the server with a larger "
                                                            "--max-text-chars", param="prompt")


def encode(engine, target: Target, item: str | list[int], where: str = "prompt") -> Prompt:
    """``item`` as the engine runs it for ``target`` (see the module docstring); 400 for token ids out of the
    vocabulary, token ids with ``REF``, an empty prompt, or more tokens than the adapter's max length; 422 for a
    text that normalises to nothing."""
    if not target.decodes:
        if not isinstance(item, str):
            raise _ids_need_raw(target, where)
        try:  # what engine.predict would refuse, refused before anything runs
            [(text, _)] = clean_inputs([(item, None)], where=where)
            check_pair(target.servable, None, where)
        except EptctlError as err:
            raise ApiError(422, err.message, err.hint or "", param=where) from None
        return Prompt(text)
    if isinstance(item, str):
        if target.raw:
            ids = tuple(engine.tokenizer(item)["input_ids"])
        else:
            try:
                ids = tuple(engine.encode(target.servable, item))
            except EptctlError as err:
                raise ApiError(422, err.message, err.hint or "", param=where) from None
        return Prompt(item, _checked(ids, target, where))
    if not target.raw:
        raise _ids_need_raw(target, where)
    vocabulary = len(engine.tokenizer)
    bad = next((t for t in item if not 0 <= t < vocabulary), None)
    if bad is not None:
        raise ApiError(400, f"{where}: token id {bad} is outside the vocabulary (0..{vocabulary - 1})",
                       "send ids of this backbone's tokenizer", param=where, code="invalid_value")
    return Prompt(None, _checked(tuple(item), target, where))


def _checked(ids: tuple[int, ...], target: Target, where: str) -> tuple[int, ...]:
    if not ids:
        raise ApiError(400, f"{where} has no tokens", "send a non-empty prompt", param=where, code="invalid_value")
    limit = target.servable.max_length
    if len(ids) > limit:
        raise ApiError(400, f"{where} has {len(ids)} tokens; {target.ref} covers at most {limit} (its max length)",
                       "shorten the prompt", param=where, code="context_length_exceeded")
    return ids


def _ids_need_raw(target: Target, where: str) -> ApiError:
    return ApiError(400, f"{where}: token ids have no template to fill for model {target.model!r}",
                    f"send text, or put the ids verbatim after the soft prompt with model {target.ref}{RAW}",
                    param=where, code="invalid_value")


def offset_tokens(tokenizer, target: Target, ids: Sequence[int]) -> int | None:
    """How many of ``ids`` the adapter's offset H covers when their log-probabilities are asked for (``echo``):
    the tokens up to the end of the last occurrence of the adapter's template cue (the template's text after its
    last field, e.g. ``"\nLabel:"``), as training and label scoring put H on the filled template and none on the
    answer that follows it; None (every token) when the prompt holds no cue. So a harness's prompt "template filled
    with a text, then a label's answer" scores that answer exactly as ``/v1/predict`` does."""
    template = target.servable.spec.template
    cue = template[template.rfind("}") + 1:]
    if not cue.strip():
        return None
    text = tokenizer.decode(list(ids))
    end = text.rfind(cue)
    if end < 0:
        return None
    end += len(cue)
    for k in range(len(ids), 0, -1):  # from the end: the continuation after the cue is a few tokens
        head = tokenizer.decode(list(ids[:k]))
        if head.endswith(cue):
            return k
        if len(head) < end:
            return None  # the cue ends inside a token: no boundary to put the offset's end at
    return None


def message_text(message: ChatMessage, n: int) -> str:
    """A message's text: its string content, or its text parts joined; 400 for another part type."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    for part in content:
        if part.type != "text":
            raise ApiError(400, f"messages[{n}]: content of type {part.type!r} is not supported",
                           "send text content only", param=f"messages[{n}].content", code="invalid_value")
    return "".join(part.text or "" for part in content)


def chat_prompt(engine, target: Target, messages: Sequence[ChatMessage], template: str | None) -> Prompt:
    """The conversation as ``target``'s input (see the module docstring): 400 when ``REF``'s last message is not
    a user's, or ``REF:raw`` has no chat template, or the template refuses the conversation."""
    texts = [message_text(m, n) for n, m in enumerate(messages)]
    if not target.raw:
        if messages[-1].role != "user":
            raise ApiError(400, f"the last message is the {messages[-1].role}'s; model {target.model!r} answers "
                                "the last user message", f"end with a user message, or send {target.ref}{RAW} "
                                                         "for the whole conversation",
                           param="messages", code="invalid_value")
        return encode(engine, target, texts[-1], where="messages")
    template = template or getattr(engine.tokenizer, "chat_template", None)
    if not template:
        raise ApiError(400, f"the backbone {engine.backbone_name} has no chat template", NO_TEMPLATE_HINT,
                       param="messages", code="chat_template_missing")
    conversation = [{"role": m.role, "content": text} for m, text in zip(messages, texts)]
    try:
        rendered = engine.tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                                        add_generation_prompt=True)
    except Exception as err:  # jinja2's TemplateError (raise_exception in a template) and its kin
        raise ApiError(400, f"the chat template refused the conversation: {err}",
                       "check the roles and their order", param="messages", code="invalid_value") from None
    # the template writes the special tokens it wants (BOS included): no more are added, as vLLM does
    ids = tuple(engine.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return Prompt(rendered, _checked(ids, target, "messages"))
