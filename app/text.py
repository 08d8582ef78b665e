"""The one rule set for text that a client sends (docs/api.md, "Text rules").

Every name, folder, metadata key and value, content type, link filename, zip entry name and tus
metadata value passes through here before anything is stored, so whatever is stored can be put
back into a header, a URL, a zip or a log line. The rules:

- **Valid UTF-8.** Text that arrives as bytes (a header, a form part's header, a percent-encoded
  URL) must decode as UTF-8; nothing is re-decoded as latin-1 or replaced with U+FFFD.
- **Refused characters,** by Unicode category: ``Cc`` (control characters, C0 and C1 and DEL),
  ``Cs`` (lone surrogates, which no encoding can carry), ``Zl`` and ``Zp`` (line and paragraph
  separators, line breaks to JavaScript and many log readers). In names and folders also the
  bidirectional embedding, override and isolate controls (U+202A-U+202E, U+2066-U+2069), which
  make ``invoice\\u202efdp.exe`` display as ``invoiceexe.pdf``, and the 66 noncharacters.
- **Bounded** in UTF-8 bytes, each field by its own limit (the constants below and in
  ``app.storage.validation``), and JSON by depth.

A refusal is ``InvalidArgument`` (400 ``invalid_argument``) whose ``field`` names the field.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from app.errors import InvalidArgument

CONTROLS = r"\x00-\x1f\x7f-\x9f"
"""Unicode's control characters (category Cc), as a character class's contents."""
SURROGATES = r"\ud800-\udfff"
"""Category Cs (Python's ``re`` only: a JSON Schema regex cannot name them)."""
SEPARATORS = r"\u2028\u2029"
"""Categories Zl and Zp."""
BIDI_CONTROLS = r"\u202a-\u202e\u2066-\u2069"
_CLASS = CONTROLS + SURROGATES + SEPARATORS
_REFUSED = re.compile(f"[{_CLASS}]")
"""Cc, Cs, Zl and Zp, as one character class."""
NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF)
)
"""Unicode's 66 noncharacters, as a character class's contents (the characters themselves, so
that the class reads the same to Python and to a JSON Schema validator)."""
_REFUSED_IN_NAMES = re.compile(f"[{_CLASS}{BIDI_CONTROLS}{NONCHARACTERS}]")
"""The same, the bidirectional controls that disguise a name's extension, and the noncharacters
(never text; U+10FFFF sorts after every other character, which listing relies on)."""

MAX_CONTENT_TYPE_BYTES = 255
"""A media type with its parameters; S3 and the local record keep it as it is."""
MAX_JSON_DEPTH = 16
"""How deeply a JSON text field (``metadata``) may nest before it is refused unparsed."""

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_CONTENT_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*(?:{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))?)*[ \t]*"
)
"""RFC 9110 §8.3.1: ``type/subtype *( OWS ";" OWS [ name=value ] )``, ASCII only."""

LABELS = {
    "file_name": "file name",
    "folder": "folder",
    "metadata": "metadata",
    "content_type": "content type",
    "filename": "filename",
    "zip_entry_name": "zip entry name",
    "upload_metadata": "Upload-Metadata",
    "url": "URL",
    "form_field": "form field",
    "cursor": "cursor",
}


def refuse(field: str, problem: str) -> InvalidArgument:
    """The refusal of ``field``: 400 ``invalid_argument`` naming it, in ``detail`` and ``field``."""
    return InvalidArgument(f"The {LABELS.get(field, field)} {problem}.", field=field)


def check_text(value: str, field: str, *, max_bytes: int, name: bool = False) -> str:
    """``value`` unchanged if it keeps the rules (``name``: also no bidirectional controls)."""
    found = (_REFUSED_IN_NAMES if name else _REFUSED).search(value)
    if found is not None:
        char = found.group()
        raise refuse(field, f"contains the character U+{ord(char):04X}, which is not allowed")
    if len(value) > max_bytes // 4 and len(value.encode()) > max_bytes:
        raise refuse(field, f"is longer than {max_bytes} bytes (UTF-8)")
    return value


def utf8(raw: bytes, field: str) -> str:
    """Bytes that must be UTF-8 text."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise refuse(field, "is not valid UTF-8") from None


def header_text(value: str, field: str) -> str:
    """A header value as the UTF-8 its client sent (ASGI servers hand headers over as latin-1)."""
    return value if value.isascii() else utf8(value.encode("latin-1"), field)


def url_is_utf8(raw: bytes) -> bool:
    """Whether a percent-encoded URL part decodes to UTF-8 (else the server substitutes U+FFFD)."""
    if b"%" not in raw and raw.isascii():
        return True
    try:
        unquote_to_bytes(raw).decode()
    except UnicodeDecodeError:
        return False
    return True


def check_content_type(value: str) -> str:
    """A media type in RFC 9110 syntax, at most ``MAX_CONTENT_TYPE_BYTES``."""
    check_text(value, "content_type", max_bytes=MAX_CONTENT_TYPE_BYTES)
    if _CONTENT_TYPE.fullmatch(value) is None:
        raise refuse("content_type", "is not a media type such as text/plain; charset=utf-8")
    return value


def is_content_type(value: str) -> bool:
    """Whether a stored content type may be sent as it is (files stored before these rules)."""
    return len(value) <= MAX_CONTENT_TYPE_BYTES and _CONTENT_TYPE.fullmatch(value) is not None


def json_object(raw: str, field: str) -> dict[str, Any]:
    """A JSON object given as text, refused if it nests deeper than ``MAX_JSON_DEPTH``."""
    if _depth(raw) > MAX_JSON_DEPTH:
        raise refuse(field, f"nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(raw)
    except ValueError:
        raise refuse(field, "must be a JSON object of strings") from None
    if not isinstance(value, dict):
        raise refuse(field, "must be a JSON object of strings")
    return value


_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _depth(raw: str) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings (without parsing the JSON)."""
    if raw.count("[") + raw.count("{") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper
    depth = deepest = 0
    for token in _BRACKETS.findall(raw):
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest
