"""How rafs objects show themselves to people: in a terminal, in IPython, and in notebooks.

Every public value object (:class:`rafs.Stat`, :class:`rafs.model.Inode`, :class:`~rafs.model.Chunk`,
:class:`~rafs.model.Blob`, :class:`rafs.Image`, tree nodes and tables) describes itself here as a title
and a list of labelled fields, in the words ``ls -l`` and ``nydus-image inspect`` use: modes as
``drwxr-xr-x``, times as dates, digests as hex, flags as names. The same description feeds
``_repr_pretty_`` (IPython's text view) and ``_repr_html_`` (notebooks), so the two never disagree.

What is never shown: a blob's cipher key and IV (``Blob.cipher_key``), raw ``bytes`` (names are
decoded, digests hex-encoded), and control characters (escaped, so a hostile name cannot drive a
terminal or forge lines).
"""

from __future__ import annotations

import datetime
import html
import stat as _stat
from typing import Iterable, Sequence

# Trees and tables can be as large as an image; the displays show this much and say what they left out.
MAX_DISPLAY_ROWS = 200


def text(value) -> str:
    """``value`` as one printable line: bytes decoded (invalid UTF-8 as ``\\x..``), control characters
    and other unprintables escaped as in a Python literal, so nothing a name holds reaches a terminal raw."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "backslashreplace")
    elif not isinstance(value, str):
        value = str(value)
    if value.isprintable():
        return value
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in value)


def filemode(mode: int) -> str:
    """``mode`` as ``ls -l`` prints it (``-rw-r--r--``, ``drwxr-xr-x``, ``lrwxrwxrwx``...)."""
    return _stat.filemode(mode)


def file_type(mode: int) -> str:
    """The file type of ``mode`` in one word: file, dir, symlink, char, block, fifo, socket or unknown."""
    return _TYPE_WORDS.get(_stat.S_IFMT(mode), "unknown")


_TYPE_WORDS = {_stat.S_IFREG: "file", _stat.S_IFDIR: "dir", _stat.S_IFLNK: "symlink", _stat.S_IFCHR: "char",
               _stat.S_IFBLK: "block", _stat.S_IFIFO: "fifo", _stat.S_IFSOCK: "socket"}


def timestamp(ns: int) -> str:
    """A time in nanoseconds since the epoch as an ISO 8601 UTC date (``2024-01-31T12:00:00Z``)."""
    seconds, nanos = divmod(int(ns), 1_000_000_000)
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):      # images may hold any u64
        return f"{seconds}s"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{nanos:09d}".rstrip("0") if nanos else "") + "Z"


def digest(value: bytes | None) -> str:
    """A digest as lowercase hex ("-" when absent)."""
    return bytes(value).hex() if value else "-"


def size(value: int) -> str:
    """A byte count for people: exact, with a binary-unit rounding beside it from 1 KiB on."""
    value = int(value)
    if value < 1024:
        return f"{value} B"
    scaled, unit = float(value), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        scaled /= 1024
        if scaled < 1024:
            break
    return f"{value} ({scaled:.1f} {unit})"


class Described:
    """Mixin for objects that describe themselves through :meth:`_display_fields`.

    Subclasses give a title and (label, value) pairs; values are already strings for people. The mixin
    turns them into IPython's pretty text and a notebook's HTML. It keeps no state (``__slots__ = ()``).
    """

    __slots__ = ()

    def __init_subclass__(cls, **kwargs):
        # IPython picks the first class in the MRO that defines either ``_repr_pretty_`` or ``__repr__``:
        # a subclass with its own ``__repr__`` would hide the inherited display, so each gets it directly.
        super().__init_subclass__(**kwargs)
        cls._repr_pretty_ = Described._repr_pretty_

    def _display_title(self) -> str:
        return type(self).__name__

    def _display_fields(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        """IPython's text display: the title, then one aligned ``label: value`` line per field."""
        printer.text(fields_text(self._display_title(), self._display_fields()))

    def _repr_html_(self) -> str:
        """A notebook's display: the title over a two-column table of fields, all escaped."""
        return fields_html(self._display_title(), self._display_fields())


def fields_text(title: str, fields: Sequence[tuple[str, str]]) -> str:
    """``title`` and aligned ``label: value`` lines, every value escaped."""
    width = max((len(label) for label, _ in fields), default=0)
    lines = [text(title)] + [f"  {label.ljust(width)}  {text(value)}" for label, value in fields]
    return "\n".join(lines)


def fields_html(title: str, fields: Sequence[tuple[str, str]]) -> str:
    """An HTML table of ``fields`` under ``title``; every string escaped."""
    rows = "".join(f"<tr><th style='text-align:left'>{html_text(label)}</th><td style='text-align:left'>"
                   f"<code>{html_text(value)}</code></td></tr>" for label, value in fields)
    return f"<div><strong>{html_text(title)}</strong><table>{rows}</table></div>"


def html_text(value) -> str:
    """``value`` escaped for HTML, control characters escaped as in :func:`text`."""
    return html.escape(text(value))


class Table(list):
    """Rows of a table view (``Image.inodes_table()``, ``chunks_table()``, ``blobs_table()``...).

    A plain ``list`` of ``dict`` records, so ``pandas.DataFrame(table)`` takes it as it is, ``json.dumps``
    writes it, and a loop reads it; it adds a text and an HTML display (the first
    :data:`MAX_DISPLAY_ROWS` rows) and :meth:`to_pandas`.
    """

    def __init__(self, rows: Iterable[dict] = (), *, columns: Sequence[str] | None = None, title: str = ""):
        super().__init__(rows)
        self.columns = list(columns) if columns is not None else (list(self[0]) if self else [])
        self.title = title

    def to_pandas(self):
        """This table as a ``pandas.DataFrame`` (pandas is the optional ``rafs[notebook]`` extra)."""
        try:
            import pandas
        except ImportError:
            from .errors import UnsupportedError
            raise UnsupportedError("to_pandas() needs pandas: pip install 'rafs[notebook]'") from None
        return pandas.DataFrame(list(self), columns=self.columns)

    def _cells(self) -> tuple[list[list[str]], int]:
        shown = [[_cell(row.get(column)) for column in self.columns] for row in self[:MAX_DISPLAY_ROWS]]
        return shown, len(self) - len(shown)

    def __str__(self) -> str:
        rows, more = self._cells()
        widths = [max([len(column)] + [len(row[i]) for row in rows]) for i, column in enumerate(self.columns)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(column.ljust(width) for column, width in zip(self.columns, widths)).rstrip())
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        if more:
            lines.append(f"... {more} more rows")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        """IPython's text display: an aligned text table."""
        printer.text(str(self))

    def _repr_html_(self) -> str:
        """A notebook's display: an HTML table (escaped), with a count of the rows left out."""
        rows, more = self._cells()
        head = "".join(f"<th>{html_text(column)}</th>" for column in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html_text(cell)}</td>" for cell in row) + "</tr>" for row in rows)
        caption = f"<caption>{html_text(self.title)}</caption>" if self.title else ""
        footer = f"<p>... {more} more rows</p>" if more else ""
        return f"<div><table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{footer}</div>"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(text(item) for item in value)
    return text(value)


def tree_lines(root, *, limit: int = MAX_DISPLAY_ROWS) -> list[str]:
    """An indented listing of a :class:`rafs.model.Node` tree (``tree``'s drawing), at most ``limit`` lines."""
    lines, stack, left = [], [(root, "", True, True)], 0
    while stack:
        node, prefix, last, is_root = stack.pop()
        if len(lines) >= limit:
            left += 1
            continue
        name = "/" if is_root else text(node.name)
        suffix = "/" if node.inode.is_dir and not is_root else ""
        if node.inode.is_symlink and node.inode.symlink is not None:
            suffix = " -> " + text(node.inode.symlink)
        lines.append(name if is_root else f"{prefix}{'└── ' if last else '├── '}{name}{suffix}")
        child_prefix = "" if is_root else prefix + ("    " if last else "│   ")
        children = node.children
        for position in range(len(children) - 1, -1, -1):
            stack.append((children[position], child_prefix, position == len(children) - 1, False))
    if left:
        lines.append(f"... {left} more entries")
    return lines
