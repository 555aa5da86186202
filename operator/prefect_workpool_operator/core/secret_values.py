"""Whether a Secret's bytes can become an HTTP header or an AWS credential.

Surrounding whitespace is stripped (a value written with ``echo`` ends in a newline);
anything else that a header or a signature cannot carry is refused with a message that
says where and what is wrong, never the value itself.
"""

from __future__ import annotations

from enum import Enum

_CONTROL_NAMES = {"\n": "a line feed (LF)", "\r": "a carriage return (CR)", "\t": "a tab", "\0": "a NUL byte"}


class Use(Enum):
    """What a Secret value is used for; each use has its own rules."""

    API_KEY = "an API key"
    BASIC_AUTH = "a basic-auth string"
    AWS_ACCESS_KEY_ID = "an AWS access key id"
    AWS_SECRET_ACCESS_KEY = "an AWS secret access key"
    AWS_SESSION_TOKEN = "an AWS session token"


class SecretValueError(ValueError):
    """The value cannot be used; ``str()`` says why and never holds the value."""


def decode_secret(raw: bytes) -> str:
    """UTF-8 text with surrounding whitespace stripped; raises ``SecretValueError``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # exc's own text quotes the offending byte: report its position only.
        raise SecretValueError(f"is not UTF-8 text (invalid byte at position {exc.start})") from None
    text = text.strip()
    if not text:
        raise SecretValueError("is empty (or only whitespace)")
    return text


def check_secret(value: str, use: Use) -> str:
    """``value`` (already stripped) if it fits ``use``; raises ``SecretValueError``."""
    if not value.strip():
        raise SecretValueError("is empty (or only whitespace)")
    value = value.strip()
    for position, char in enumerate(value):
        if char in _CONTROL_NAMES or ord(char) < 0x20 or ord(char) == 0x7F:
            name = _CONTROL_NAMES.get(char, f"control character U+{ord(char):04X}")
            raise SecretValueError(f"contains {name} at position {position}; it cannot be sent as {use.value}")
        if ord(char) > 0x7E:
            raise SecretValueError(
                f"contains a non-ASCII character at position {position}; {use.value} must be printable ASCII"
            )
    if use is not Use.BASIC_AUTH and " " in value:
        raise SecretValueError(f"contains a space at position {value.index(' ')}; {use.value} has none")
    if use is Use.BASIC_AUTH and ":" not in value:
        raise SecretValueError("must hold 'user:password' (no ':' found)")
    return value
