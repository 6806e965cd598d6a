"""Keys as the operator's terminal may show them: any client can write a key holding escape sequences.

`printable` writes control characters, line and paragraph separators, bidirectional overrides
and undecodable bytes (surrogate escapes) the way a Python string literal does (`\\x1b`, `\\n`,
`\\u202e`, `\\xff`), and a backslash as `\\\\`, so every key printed is one line that reads
back to one key, as `ls -b` does for file names.
"""

from __future__ import annotations

import logging
import unicodedata

log = logging.getLogger(__name__)

#: characters that reorder what a terminal shows after them ("Trojan source")
BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: the Unicode categories that are never shown as themselves: controls, line and paragraph separators
ESCAPED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}
SURROGATE_ESCAPES = range(0xDC80, 0xDD00)  # os.fsdecode's stand-ins for the bytes 0x80-0xff


def _escape(ch: str) -> str:
    """The escape of one character that must not reach a terminal as itself."""
    if ch in SHORT_ESCAPES:
        return SHORT_ESCAPES[ch]
    code = ord(ch)
    if code in SURROGATE_ESCAPES:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def _plain(ch: str) -> bool:
    if ch == "\\" or ch in BIDI_CONTROLS:
        return False
    if "\ud800" <= ch <= "\udfff":
        return False
    return unicodedata.category(ch) not in ESCAPED_CATEGORIES


def printable(text: str) -> str:
    """text with every character a terminal would act on (or cannot encode) written as an escape."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(ch if _plain(ch) else _escape(ch) for ch in text)


def printable_lines(text: str) -> str:
    """A message of several lines (an error list) escaped line by line: its own line breaks stay."""
    return "\n".join(printable(line) for line in text.split("\n"))
