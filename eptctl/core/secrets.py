"""Masking of secrets in recorded text: the one function every place that records or shows a command line uses.

A secret is the password of a URL with userinfo (``postgresql+psycopg://me:PASSWORD@host/db``), a secret-looking
query parameter of a URL (``?password=...``), the value of a secret-looking flag (``--token X``,
``--api-key=X``) and the value of a secret-looking assignment (``EPTCTL_SERVE_TOKEN=X``). Each becomes ``***``;
everything else stays as it was, so a masked command line still reads (and re-runs, once the secret is supplied).
"""

from __future__ import annotations

import shlex
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
# Flag and variable names whose value is a secret, by how they end: --token, --hf-token, --password, --api-key,
# EPTCTL_SERVE_TOKEN, AWS_SECRET_ACCESS_KEY (ends in key: only the *_access_key/api_key forms, not --sort-key).
_SECRET_ENDINGS = ("token", "password", "passwd", "secret", "api-key", "api_key", "apikey", "access-key",
                   "access_key", "credentials")
_PLACEHOLDER = "MASKEDSECRET"  # shell-safe stand-in while quoting, so a masked token is not quoted for its stars


def is_secret_name(name: str) -> bool:
    """True if a flag (``--token``) or variable (``EPTCTL_SERVE_TOKEN``) named ``name`` holds a secret."""
    return name.lstrip("-").lower().endswith(_SECRET_ENDINGS)


def mask_url(url: str) -> str:
    """``url`` with its password, and the values of secret-looking query parameters, replaced by ``***``; any
    other text is returned unchanged. Never raises."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed "[": hide all the userinfo there may be
        return f"{scheme}{sep}{MASK}@{rest.rpartition('@')[2]}" if "@" in rest else url
    masked = url
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        masked = masked.replace(f"{userinfo}@", f"{user}:{MASK}@", 1)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if value and is_secret_name(key):
            masked = masked.replace(f"{key}={value}", f"{key}={MASK}")
    return masked


def _mask_words(text: str) -> str:
    """Each space-separated word of ``text`` that is a URL, masked (a URL inside a description or a value)."""
    return " ".join(mask_url(word) for word in text.split(" "))


def _mask_tokens(tokens: list[str]) -> list[str]:
    masked, secret_next = [], False
    for token in tokens:
        if secret_next:
            masked.append(MASK)
            secret_next = False
            continue
        name, eq, value = token.partition("=")
        if token.startswith("-") and is_secret_name(name):
            masked.append(f"{name}={MASK}" if eq else token)
            secret_next = not eq
        elif eq and name.isidentifier() and is_secret_name(name):  # EPTCTL_SERVE_TOKEN=...
            masked.append(f"{name}={MASK}")
        elif eq and (token.startswith("-") or name.isidentifier()):  # --registry=URL, EPTCTL_REGISTRY_URL=URL
            masked.append(f"{name}={_mask_words(value)}")
        else:
            masked.append(_mask_words(token))
    return masked


def mask_secrets(command_line: str | None) -> str | None:
    """``command_line`` (a shell command line, or any text) with every secret replaced by ``***`` (see the module
    docstring); ``None`` stays ``None``. Never raises: text that is not a valid shell line is masked word by word.
    """
    if not command_line:
        return command_line
    try:
        tokens = shlex.split(command_line)
    except ValueError:  # unbalanced quotes: not a shell line, mask its words
        return " ".join(_mask_tokens(command_line.split(" ")))
    masked = _mask_tokens(tokens)
    if masked == tokens:
        return command_line  # nothing secret: keep the exact text, quoting included
    return " ".join(shlex.quote(t.replace(MASK, _PLACEHOLDER)).replace(_PLACEHOLDER, MASK) for t in masked)


def recorded_command_line(argv: list[str]) -> str:
    """The command line of an ``eptctl`` run as the registry records it: ``eptctl`` and ``argv[1:]``, shell-quoted,
    secrets masked."""
    return mask_secrets(shlex.join(["eptctl", *argv[1:]]))
