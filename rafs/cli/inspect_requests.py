"""``rafs inspect -R REQUEST``: nydus-image inspect's request mode (src/bin/nydus-image/inspect.rs).

The reference answers one request and then prints its JSON value on stdout, compact (``null`` for the
requests that print text instead); tools parse it: nydusify's checker reads ``-R blobs``
(``blob_id``, ``compressed_size``, ``decompressed_size``, ``readahead_*``) and nydus-snapshotter's tarfs
looks for the text ``"blob_id":"<id>"`` in it. The requests and what they print:

- ``stats``: ``{"inodes_count": N}`` (rafs adds its counts over the tree);
- ``blobs``: the blob table (rafs adds each blob's other fields; never a cipher key);
- ``prefetch``: ``[{"inode": INO, "path": [every path of it]}]``;
- ``ls``, ``cd DIR``, ``stat NAME``: the directory being inspected (the root in request mode), as text;
- ``chunk OFFSET``: every chunk at that compressed offset, with the file holding it, as text;
- ``icheck INODE``: every path of that inode with its attributes, as text;
- ``exit`` and ``q``: nothing; ``help``: the list, and an error (no help in request mode);
- ``all`` (rafs's own): the whole summary, as ``rafs inspect`` without ``-R`` gives with ``--json``.

The text follows the reference's wording and layout; names are quoted as the reference's Rust ``{:?}``
does, with everything unprintable escaped, so no image can write control characters to a terminal.
"""

from __future__ import annotations

import json
import stat as _stat

from rafs.errors import InvalidArgumentError

USAGE = """
    stats:              Display RAFS filesystesm metadata
    ls:                 Show files in current directory
    cd DIR:             Change current directory
    stat FILE_NAME:     Show particular information of RAFS file
    blobs:              Show blob table
    prefetch:           Show prefetch table
    chunk OFFSET:       List basic info of a single chunk together with a list of files that share it
    icheck INODE:       Show path of the inode and basic information
    exit:               Exit
        """
#: Requests and whether each takes an argument.
REQUESTS = {"stats": False, "ls": False, "cd": True, "stat": True, "blobs": False, "prefetch": False,
            "chunk": True, "icheck": True, "exit": False, "q": False, "help": False, "all": False}
MAX_U64 = (1 << 64) - 1


def quoted(name) -> str:
    """``name`` (bytes or str) as Rust's ``{:?}`` prints an OsStr: in double quotes, with ``\\``, ``"``
    and every unprintable character escaped (bytes that are not UTF-8 as ``\\xNN``)."""
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    text = bytes(name).decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        elif not ch.isprintable():
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _text(path: bytes) -> str:
    """A path for a line of text: printable, unquoted (the reference's ``to_string_lossy``)."""
    return quoted(path)[1:-1]


def _parse(request: str) -> tuple[str, str | None]:
    words = request.split()
    if not words:
        raise InvalidArgumentError("empty inspect request (--request); one of: " + ", ".join(REQUESTS))
    command, argument = words[0], (words[1] if len(words) > 1 else None)
    takes = REQUESTS.get(command)
    if takes is None or takes != (argument is not None) and command not in ("help", "exit", "q"):
        raise InvalidArgumentError(f"unsupported inspect request `{request.strip()}` (--request takes one of: "
                                   "stats, blobs, prefetch, ls, cd DIR, stat FILE_NAME, chunk OFFSET, "
                                   "icheck INODE, all)")
    return command, argument


def check(request: str) -> None:
    """Refuse a request that is not one (before the image is opened), naming it."""
    command, argument = _parse(request)
    if command in ("chunk", "icheck"):
        _number(argument, "OFFSET" if command == "chunk" else "INODE", request)


def _number(argument: str, what: str, request: str) -> int:
    try:
        value = int(argument, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_U64:
        raise InvalidArgumentError(f"invalid arguments in inspect request `{request.strip()}`: {what} must be "
                                   f"a number from 0 to {MAX_U64}, not {argument!r}")
    return value


def execute(image, request: str, out) -> object:
    """Answer ``request`` about ``image``: write its text to ``out`` and return its JSON value (None
    for ``null``)."""
    command, argument = _parse(request)
    if command in ("exit", "q"):
        return None
    if command == "help":
        out.write(USAGE + "\n")
        raise InvalidArgumentError("help is not supported in inspect request mode (--request)")
    if command == "all":
        return image.describe()
    if command == "stats":
        return {"inodes_count": image.statfs().f_files, **image.tree_stats()}
    if command == "blobs":
        return [_blob(blob, summary) for blob, summary in zip(image.blobs, image.blob_summaries())]
    if command == "prefetch":
        return _prefetch(image)
    if command == "ls":
        _ls(image, out)
    elif command == "cd":
        _cd(image, argument, out)
    elif command == "stat":
        _stat_name(image, argument, out)
    elif command == "chunk":
        _chunk(image, _number(argument, "OFFSET", request), out)
    elif command == "icheck":
        _icheck(image, _number(argument, "INODE", request), out)
    return None


def dump(value, out) -> None:
    """The request's value as the reference prints it (serde_json, compact), then a newline."""
    out.write(json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n")


def _blob(blob, summary: dict) -> dict:
    info = {"blob_id": blob.blob_id, "readahead_offset": blob.readahead_offset,
            "readahead_size": blob.readahead_size, "decompressed_size": blob.uncompressed_size,
            "compressed_size": blob.compressed_size}
    for key, value in summary.items():
        info.setdefault(key, value)
    return info


def _paths_of(image, wanted: set) -> dict:
    """ino -> every path (text) of it, for the inodes in ``wanted`` (one walk of the tree)."""
    found: dict = {}
    for path, inode in image.iter_entries("/"):
        if inode.ino in wanted:
            found.setdefault(inode.ino, []).append(_text(path))
    return found


def _prefetch(image) -> list:
    inos = image.reader.prefetch_inodes()
    paths = _paths_of(image, set(inos)) if inos else {}
    return [{"inode": ino, "path": paths.get(ino, [])} for ino in inos]


def _children(image, ino: int):
    """(name, inode) of each entry of the directory ``ino`` but ``.`` and ``..``, in on-disk order."""
    for name, child in image.dir_entries(ino):
        if name not in (b".", b".."):
            yield name, image.get_inode(child)


def _ls(image, out) -> None:
    for name, inode in _children(image, image.root_ino):
        kind = _stat.S_IFMT(inode.mode)
        sign = {_stat.S_IFREG: "-", _stat.S_IFDIR: "d", _stat.S_IFLNK: "l"}.get(kind, " ")
        out.write(f"{sign}    {inode.ino:<8} {quoted(name)}\n")


def _find(image, name: str):
    wanted = name.encode("utf-8", "surrogateescape")
    for child_name, inode in _children(image, image.root_ino):
        if child_name == wanted:
            return inode
    return None


def _cd(image, name: str, out) -> None:
    if name in (".", ".."):
        return
    inode = _find(image, name)
    if inode is None or not inode.is_dir:
        out.write(f"{name} is {'not a directory' if inode is not None else 'not found'}\n")


def _stat_block(inode, name: bytes, parent_ino: int, out) -> None:
    out.write(f"""
Inode Number:       {inode.ino}
Name:               {quoted(name)}
Size:               {inode.size}
Parent:             {parent_ino}
Mode:               0x{inode.mode:X}
Permissions:        {inode.mode:o}
Nlink:              {inode.nlink}
UID:                {inode.uid}
GID:                {inode.gid}
Mtime:              {inode.mtime}
MtimeNsec:          {inode.mtime_nsec}
Blocks:             {inode.blocks}
""")


def _blob_ids(image) -> dict:
    return {blob.index: blob.blob_id for blob in image.blobs}


def _stat_name(image, name: str, out) -> None:
    root = image.root_ino
    if name == ".":
        _stat_block(image.get_inode(root), b"/", root, out)
        return
    inode = _find(image, name)
    if inode is None:
        return
    _stat_block(inode, name.encode("utf-8", "surrogateescape"), root, out)
    if not inode.is_reg:
        return
    out.write("  Chunk list:\n")
    ids = _blob_ids(image)
    for i, chunk in enumerate(image.chunks("/" + name)):
        out.write(f"""        {i} ->
        file offset: {i * image.chunk_size}, chunk index: {chunk.index}
        compressed size: {chunk.compressed_size}, decompressed size: {chunk.uncompressed_size}
        compressed offset: {chunk.compressed_offset}, decompressed offset: {chunk.uncompressed_offset}
        blob id: {ids.get(chunk.blob_index, '?')}
        chunk id: {chunk.digest.hex()}
    \n""")


def _parent(path: bytes) -> bytes:
    head = path.rsplit(b"/", 1)[0]
    return head or b"/"


def _chunk(image, offset: int, out) -> None:
    ids = _blob_ids(image)
    for path, inode in image.iter_entries("/"):
        if not inode.is_reg or not inode.chunk_count:
            continue
        for chunk in image.chunks(path):
            if chunk.compressed_offset != offset:
                continue
            out.write(f"""
File: {_text(path.rsplit(b'/', 1)[1]):32} Parent Path: {_text(_parent(path)):32}
Compressed Offset: {chunk.compressed_offset}, Compressed Size: {chunk.compressed_size}
Decompressed Offset: {chunk.uncompressed_offset}, Decompressed Size: {chunk.uncompressed_size}
Chunk ID: {chunk.digest.hex():50},
Blob ID: {ids.get(chunk.blob_index, '?')}

""")


def _icheck(image, ino: int, out) -> None:
    parents = {b"/": image.root_ino}
    for path, inode in image.iter_entries("/"):
        if inode.is_dir:
            parents[path] = inode.ino
        if inode.ino != ino:
            continue
        out.write(_text(path) + "\n")
        name = path.rsplit(b"/", 1)[1] or b"/"
        _stat_block(inode, name, parents.get(_parent(path), image.root_ino), out)
