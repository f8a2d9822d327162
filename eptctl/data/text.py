"""The one normalisation of input text, for every path a text can take (files, arguments, stdin, library calls).

A text is decoded as UTF-8 with an optional byte-order mark, its line endings become ``\\n``, surrounding
whitespace goes, and an empty text is refused: training refuses it, so scoring must too. Undecodable bytes are a
one-line error naming where they are (file and line, stdin line, argument number) with the hint to save as UTF-8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from eptctl.core.errors import EptctlError

BOM = "\ufeff"
UTF8_HINT = "save it as UTF-8 (for example: iconv -f latin1 -t utf-8 FILE > FILE.utf8)"


def clean(value: Any) -> str | None:
    """The normalised text of a cell or an input, or None when there is none (missing, NaN, blank)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).replace("\r\n", "\n").replace("\r", "\n").lstrip(BOM).strip()
    return text or None


def cell(value: Any, where: str) -> str | None:
    """The normalised text of a data cell or an input (as :func:`clean`), or None when there is none. A value that is
    not a string (a list, an object, a number or a boolean from a typed format such as JSON) is refused with an
    ``EptctlError`` naming ``where`` (the row and column): written as text it would be a Python repr (``"['a',
    'b']"``) trained on or scored without a word. CSV readers infer numbers from text; they turn them back first."""
    if value is not None and not isinstance(value, str) and not (isinstance(value, float) and math.isnan(value)):
        kind = {dict: "an object", list: "a list", bool: "a boolean"}.get(type(value), "a number" if isinstance(
            value, (int, float)) else f"a {type(value).__name__}")
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise EptctlError(f"{where} holds {kind} ({shown}), not text",
                          hint="a text column holds strings: write the value as a JSON string, or name the right "
                               "column")
    return clean(value)


def first_bad_line(data: bytes) -> int | None:
    """1-based line of the first byte sequence that is not UTF-8, or None when all of ``data`` decodes."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return data.count(b"\n", 0, err.start) + 1
    return None


def decode(data: bytes, where: str) -> str:
    """``data`` as text (UTF-8, optional BOM removed); raises ``EptctlError`` naming ``where`` and the line."""
    line = first_bad_line(data)
    if line is not None:
        raise EptctlError(f"{where} is not UTF-8 text (line {line} holds bytes that do not decode)", hint=UTF8_HINT)
    return data.decode("utf-8").lstrip(BOM)


def lines(data: bytes, where: str) -> list[str]:
    """The non-blank lines of a plain-text input (a ``.txt`` file, stdin), each normalised."""
    return [text for text in map(clean, decode(data, where).splitlines()) if text is not None]


def _valid(text: str, where: str) -> str:
    try:
        text.encode("utf-8")  # argv decodes undecodable bytes to lone surrogates (PEP 383); they cannot be scored
    except UnicodeEncodeError:
        raise EptctlError(f"{where} is not UTF-8 text", hint=UTF8_HINT) from None
    return text


def clean_inputs(inputs: Sequence[tuple[Any, Any]], where: str = "input") -> list[tuple[str, str | None]]:
    """Normalised ``(text, text_pair)`` inputs for scoring; raises ``EptctlError`` for an empty text (naming
    ``where`` and its 1-based position), a value that is not a string, or text that is not valid UTF-8."""
    out = []
    for number, (text, pair) in enumerate(inputs, start=1):
        cleaned = cell(text, f"{where} {number}")
        if cleaned is None:
            raise EptctlError(f"{where} {number} is empty", hint="give every input some text")
        cleaned_pair = None if pair is None else cell(pair, f"the second text of {where} {number}")
        if pair is not None and cleaned_pair is None:
            raise EptctlError(f"the second text of {where} {number} is empty", hint="give every pair two texts")
        out.append((_valid(cleaned, f"{where} {number}"),
                    None if cleaned_pair is None else _valid(cleaned_pair, f"{where} {number} (second text)")))
    return out
