"""Image text made safe to show: names, blob ids and targets an image carries are arbitrary bytes.

A file name or blob id holding ``\\n`` forges a log line; one holding ``\\x1b[...`` drives the terminal
that shows it. :func:`printable` is the one place such text becomes human-readable output: every
character that is not printable (C0 and C1 controls, DEL, line and paragraph separators, format
characters such as bidi overrides) is written as a Python-style escape, bytes that are not UTF-8 (the
surrogate escapes of :func:`os.fsdecode`) as ``\\xNN``. The result holds only printable characters, so
escaping twice changes nothing (a message escaped when raised and again when printed reads the same);
a backslash is left as it is, as text it drives nothing. JSON output needs none of this:
:func:`json.dumps` escapes on its own.
"""

from __future__ import annotations


def printable(value) -> str:
    """``value`` (str, or bytes read as UTF-8) with everything unsafe to print escaped."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "surrogateescape")
    elif not isinstance(value, str):
        value = str(value)
    if value.isprintable():
        return value                                # the common case: nothing to escape
    return "".join(_escape(ch) for ch in value)


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch.isprintable():
        return ch
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:                    # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
