"""Inputs an attacker controls, as generators and hypothesis strategies (issue 12's red-team pass).

Each family here is what would have found one class of issue 12's attacks; all are generic (they say
nothing about how rafs handles them), so they serve any RAFS or tar reader. (Blob ids have their own
module, :mod:`rafs.testing.blob_ids`.)

* tar headers whose size fields declare far more than the layer holds: :func:`tar_header`,
  :func:`tar_header_bombs` (PAX ``x``/``g`` and GNU ``L``/``K`` headers, GNU sparse ``realsize``, PAX
  sparse maps), :func:`tar_header_mutants` of a real layer, and the :func:`tar_sizes` strategy;
* declared sizes against real chunk coverage: :func:`declared_size_mutants` sets every regular file's
  ``i_size`` of a built bootstrap far past what its chunks cover; :func:`declared_sizes` draws them;
* depth: :func:`deep_chain` makes a directory chain of any depth as a :class:`rafs.model.Node` tree
  without recursion, for :func:`rafs.testing.build_node`;
* hostile HTTP servers: :class:`HostileHTTPServer` on 127.0.0.1 (ignores ``Range``, drips, sends an
  endless body, lies about its length) and the :func:`http_behaviours` strategy;
* configurations: :data:`CONFIG_SEEDS` (nydusd v1/v2 and nydusify backend documents) and
  :func:`config_mutants` (deep nesting, bytes that are not UTF-8, every value of every key replaced
  by each value of the wrong type or size);
* OCI image layouts: :func:`oci_layout_mutants` (every value of the index, each manifest and each
  config replaced the same way, or the document made unparsable, with the digests and sizes up the
  chain made right again, so a reader gets past them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat as _stat
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from hypothesis import strategies as st

from ..model import Inode, Node
from . import mutate

# -- tar headers -------------------------------------------------------------------------------------

TAR_BLOCK = 512
#: Values a tar size field can hold (11 octal digits; GNU base-256 beyond) and that a reader must not
#: allocate or loop over: 1.5 GiB, 8 GiB - 1 (the octal maximum), 1 TiB, 2^63 - 1.
HOSTILE_TAR_SIZES = (3 << 29, 0o77777777777, 1 << 40, (1 << 63) - 1)


def _size_field(value: int, width: int = 12) -> bytes:
    """An octal numeric field, or GNU base-256 (first byte 0x80) when octal cannot hold ``value``."""
    if value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    return b"\x80" + value.to_bytes(width - 1, "big")


def tar_header(name: bytes = b"f", *, size: int = 0, typeflag: bytes = b"0", mode: int = 0o644,
               linkname: bytes = b"", gnu: bool = False, extra: bytes = b"") -> bytes:
    """One 512-byte tar header with a correct checksum; ``size`` may be anything up to 2^88 (base-256).
    ``gnu`` writes the old GNU magic (needed for old GNU sparse headers); ``extra`` fills the bytes
    from offset 345 (the ustar prefix, or the old GNU sparse map and ``realsize``)."""
    header = bytearray(TAR_BLOCK)
    header[0:100] = name[:100].ljust(100, b"\0")
    header[100:108] = b"%07o\0" % mode
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = _size_field(size)
    header[136:148] = b"00000000000\0"
    header[156:157] = typeflag
    header[157:257] = linkname[:100].ljust(100, b"\0")
    header[257:265] = b"ustar  \0" if gnu else b"ustar\x0000"
    header[345:345 + len(extra)] = extra[:TAR_BLOCK - 345]
    return _resum(bytes(header))


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % TAR_BLOCK)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length += 1
    return b"%d" % length + body


def _old_gnu_sparse(realsize: int) -> bytes:
    """The old GNU sparse map of a header (from offset 386 of the header, so ``extra`` starts 41 bytes
    earlier): one 512-byte extent at 0, no extension, and ``realsize``."""
    entry = _size_field(0) + _size_field(TAR_BLOCK)
    return b"\0" * 41 + entry + b"\0" * 72 + b"\0" + _size_field(realsize)


def tar_header_bombs(*, sizes=HOSTILE_TAR_SIZES, body: int = 4096) -> Iterator[tuple[str, bytes]]:
    """Small tar layers (a few KiB each, ``body`` bytes of data after the hostile header) whose first
    header declares ``size`` for an extended header or a sparse file's real size, as
    ``(description, layer bytes)``. A reader must refuse each, or read it in memory and time bounded
    by the layer's real size, never by the declared one."""
    filler = b"A" * body
    tail = _pad(b"") + tar_header(b"after", size=5) + _pad(b"hello") + b"\0" * 1024
    for size in sizes:
        for typeflag, what in ((b"x", "PAX extended header"), (b"g", "PAX global header"),
                               (b"L", "GNU long name"), (b"K", "GNU long link name")):
            name = b"././@LongLink" if typeflag in (b"L", b"K") else b"pax"
            yield (f"{what} declaring {size} bytes", tar_header(name, size=size, typeflag=typeflag) + filler + tail)
        sparse = tar_header(b"sparse", size=TAR_BLOCK, typeflag=b"S", gnu=True, extra=_old_gnu_sparse(size))
        yield f"old GNU sparse file of realsize {size}", sparse + _pad(b"s" * TAR_BLOCK) + tail
        pax = _pad(_pax_record(b"GNU.sparse.major", b"1") + _pax_record(b"GNU.sparse.minor", b"0")
                   + _pax_record(b"GNU.sparse.name", b"sparse")
                   + _pax_record(b"GNU.sparse.realsize", b"%d" % size))
        sparse_map = _pad(b"1\n0\n%d\n" % TAR_BLOCK)
        yield (f"PAX 1.0 sparse file of realsize {size}",
               tar_header(b"pax", size=len(pax), typeflag=b"x") + pax
               + tar_header(b"GNUSparseFile.0/sparse", size=len(sparse_map) + TAR_BLOCK) + sparse_map
               + _pad(b"s" * TAR_BLOCK) + tail)


def tar_header_mutants(layer: bytes, *, sizes=HOSTILE_TAR_SIZES,
                       typeflags=(b"x", b"g", b"L", b"K", b"S")) -> Iterator[tuple[str, bytes]]:
    """Structure-aware mutants of an uncompressed tar ``layer``: each header's size field set to each of
    ``sizes``, and its type flag to each of ``typeflags``, with the checksum made right again (so a
    reader gets past it), as ``(description, mutant)``."""
    import tarfile
    import io
    try:
        with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
            offsets = [member.offset for member in tar.getmembers()]
    except tarfile.ReadError:           # no header at all (an empty archive): nothing to mutate
        return
    for at in offsets:
        header = layer[at:at + TAR_BLOCK]
        for size in sizes:
            yield f"header at {at:#x}: size {size}", layer[:at] + _resum(header[:124] + _size_field(size)
                                                                         + header[136:]) + layer[at + TAR_BLOCK:]
        for flag in typeflags:
            yield (f"header at {at:#x}: type {flag.decode()}",
                   layer[:at] + _resum(header[:156] + flag + header[157:]) + layer[at + TAR_BLOCK:])


def _resum(header: bytes) -> bytes:
    """``header`` with its checksum field recomputed."""
    blank = header[:148] + b" " * 8 + header[156:]
    return blank[:148] + b"%06o\0 " % sum(blank) + blank[156:]


def tar_sizes() -> st.SearchStrategy[int]:
    """Size-field values: honest small ones, block boundaries, and the hostile extremes."""
    return st.one_of(st.integers(0, 4 * TAR_BLOCK), st.sampled_from(HOSTILE_TAR_SIZES),
                     st.integers(0, (1 << 63) - 1))


# -- declared sizes ----------------------------------------------------------------------------------

#: File sizes far past any real chunk coverage: 1 TiB, 2^40 + 1, 2^63 - 1, 2^64 - 1.
HOSTILE_FILE_SIZES = (1 << 40, (1 << 40) + 1, (1 << 63) - 1, (1 << 64) - 1)


def declared_sizes(covered: int) -> st.SearchStrategy[int]:
    """``i_size`` values past ``covered`` bytes (what a file's chunks really hold)."""
    return st.one_of(st.sampled_from(HOSTILE_FILE_SIZES), st.integers(covered + 1, (1 << 64) - 1))


def declared_size_mutants(bootstrap: bytes, *, sizes=HOSTILE_FILE_SIZES) -> Iterator[tuple[str, bytes]]:
    """``bootstrap`` (v5 or v6) with one regular file's ``i_size`` set to each of ``sizes`` (values a
    v6 compact inode cannot hold are cut to 32 bits), as ``(description, mutant)``."""
    from ..v5 import layout as v5_layout
    from ..v6 import layout as v6_layout
    from .schemas import flat_fields
    v6 = bootstrap[v6_layout.EROFS_SUPER_OFFSET:v6_layout.EROFS_SUPER_OFFSET + 4] == b"\xe2\xe1\xf5\xe0"
    structures = mutate.v6_structures(bootstrap) if v6 else mutate.v5_structures(bootstrap)
    inode_schemas = (v5_layout.Inode, v6_layout.InodeCompact, v6_layout.InodeExtended)
    for located in structures:
        if located.schema not in inode_schemas:
            continue
        mode_at = next(rel for name, rel, _ in flat_fields(located.schema) if name == "i_mode")
        mode = int.from_bytes(bootstrap[located.offset + mode_at:located.offset + mode_at + 2], "little")
        if not _stat.S_ISREG(mode):
            continue
        for size in sizes:
            value = size & 0xFFFFFFFF if located.schema is v6_layout.InodeCompact else size
            yield f"{located.name}: i_size {value}", mutate.set_field(bootstrap, located, "i_size", value)


# -- depth -------------------------------------------------------------------------------------------

def deep_chain(depth: int, *, name: bytes = b"d", leaf: bytes | None = b"leaf") -> Node:
    """A root with a chain of ``depth`` nested directories named ``name`` (and, at the bottom, an empty
    file ``leaf`` unless None), made without recursion so any depth works."""
    root = Node(b"/", Inode(ino=1, mode=0o40755, nlink=2))
    bottom = root
    for level in range(depth):
        child = Node(name, Inode(ino=level + 2, mode=0o40755, nlink=2))
        bottom.children.append(child)
        bottom.inode.nlink += 1
        bottom = child
    if leaf is not None:
        bottom.children.append(Node(leaf, Inode(ino=depth + 2, mode=0o100644)))
    return root


def depths(max_depth: int = 4096) -> st.SearchStrategy[int]:
    """Chain depths around the limits readers tend to have (recursion, PATH_MAX/2, 2^16)."""
    return st.one_of(st.sampled_from([d for d in (255, 1000, 2048, 4096, 1 << 16) if d <= max_depth]),
                     st.integers(1, max_depth))


# -- hostile HTTP servers ----------------------------------------------------------------------------

#: What :class:`HostileHTTPServer` can do: ``ignore-range`` answers every GET with 200 and the whole
#: body followed by ``padding`` bytes; ``drip`` sends the asked-for bytes one every ``interval``
#: seconds (then hangs up after ``limit`` bytes); ``endless`` sends an endless body without a length
#: (cut at ``limit`` bytes: ``limit`` keeps a test of a client that fails finite); ``long-body``
#: declares the asked-for length but sends ``padding`` bytes more; ``honest`` serves ranges correctly.
HTTP_BEHAVIOURS = ("honest", "ignore-range", "drip", "endless", "long-body")


def http_behaviours() -> st.SearchStrategy[str]:
    return st.sampled_from(HTTP_BEHAVIOURS[1:])


class HostileHTTPServer:
    """A threaded HTTP server on 127.0.0.1 serving ``files`` (``{url path: bytes}``) as ``behaviour``.

    Use it as a context manager; :attr:`url` is its base URL and :attr:`sent` counts the body bytes
    written so far (to check that a client stopped reading)."""

    def __init__(self, files: dict[str, bytes], behaviour: str = "honest", *, padding: int = 64 << 20,
                 interval: float = 0.2, limit: int = 1 << 30):
        if behaviour not in HTTP_BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r} (expected one of {', '.join(HTTP_BEHAVIOURS)})")
        self.files, self.behaviour = files, behaviour
        self.padding, self.interval, self.limit = padding, interval, limit
        self.sent = 0
        self.requests: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HostileHTTPServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping = True
        self._server.shutdown()
        self._server.server_close()

    stopping = False

    def _count(self, n: int) -> None:
        with self._lock:
            self.sent += n

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(head=True)

            def do_GET(self):
                self._answer(head=False)

            def _answer(self, head: bool):
                body = server.files.get(self.path.split("?", 1)[0])
                server.requests.append((self.command, self.headers.get("Range")))
                if body is None:
                    self.send_error(404)
                    return
                start, end = _range(self.headers.get("Range"), len(body))
                try:
                    getattr(self, "_" + server.behaviour.replace("-", "_"))(body, start, end, head)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _headers(self, status: int, length: int | None, extra=()):
                self.send_response(status)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                for key, value in extra:
                    self.send_header(key, value)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def _write(self, data: bytes):
                self.wfile.write(data)
                server._count(len(data))

            def _honest(self, body, start, end, head):
                ranged = self.headers.get("Range") is not None
                self._headers(206 if ranged else 200, end - start,
                              [("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")] if ranged else [])
                if not head:
                    self._write(body[start:end])

            def _ignore_range(self, body, start, end, head):
                self._headers(200, len(body) + server.padding)
                if not head:
                    self._write(body)
                    self._stream(server.padding)

            def _long_body(self, body, start, end, head):
                self._headers(206, end - start, [("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")])
                if not head:
                    self._write(body[start:end])
                    self._stream(server.padding)

            def _drip(self, body, start, end, head):
                self._headers(206, end - start, [("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")])
                if not head:
                    for i in range(start, min(end, start + server.limit)):
                        if server.stopping:
                            return
                        self._write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(server.interval)

            def _endless(self, body, start, end, head):
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                if not head:
                    self._write(body)
                    self._stream(server.limit)

            def _stream(self, count: int):
                block = b"\0" * (1 << 16)
                while count > 0 and not server.stopping:
                    self._write(block[:count])
                    count -= len(block)

        return Handler


def _range(header: str | None, size: int) -> tuple[int, int]:
    """``[start, end)`` of a ``bytes=a-b`` Range header (the whole body without one)."""
    if not header or not header.startswith("bytes="):
        return 0, size
    first, _, last = header[6:].split(",")[0].partition("-")
    if not first:
        return max(0, size - int(last)), size
    return int(first), min(size, int(last) + 1 if last else size)



# -- configurations ----------------------------------------------------------------------------------

#: Valid documents of each kind a configuration option takes: nydusd v1 JSON, v2 JSON and TOML
#: (localfs, s3, http-proxy backends) and nydusify's backend configuration.
CONFIG_SEEDS: dict[str, bytes] = {
    "v1.json": json.dumps({"device": {"backend": {"type": "localfs", "config": {"dir": "/var/blobs"}},
                                      "cache": {"type": "blobcache", "config": {"work_dir": "/var/cache"}}},
                           "mode": "direct", "digest_validate": False, "enable_xattr": True,
                           "fs_prefetch": {"enable": True, "threads_count": 8, "merging_size": 1048576,
                                           "prefetch_all": True}}).encode(),
    "v2.json": json.dumps({"version": 2, "id": "x", "backend": {"type": "http-proxy", "http-proxy": {
        "addr": "http://127.0.0.1:9", "path": "/blobs", "timeout": 5, "connect_timeout": 5, "retry_limit": 1}},
        "cache": {"type": "blobcache", "filecache": {"work_dir": "/var/cache"}},
        "rafs": {"validate": True, "enable_xattr": True, "prefetch": {"enable": True, "threads": 4,
                                                                      "batch_size": 131072}}}).encode(),
    "v2.toml": b'version = 2\nid = "x"\n[backend]\ntype = "s3"\n[backend.s3]\nendpoint = "127.0.0.1:9"\n'
               b'scheme = "http"\nbucket_name = "b"\nregion = "r"\nobject_prefix = "p/"\n'
               b'access_key_id = "AKIA"\naccess_key_secret = "secret"\n[cache]\ntype = "blobcache"\n'
               b'[cache.filecache]\nwork_dir = "/var/cache"\n',
    "backend.json": json.dumps({"endpoint": "127.0.0.1:9", "scheme": "http", "bucket_name": "b", "region": "r",
                                "object_prefix": "p/", "access_key_id": "AKIA",
                                "access_key_secret": "secret"}).encode(),
}

#: Values of the wrong type or size for any key: a reader must refuse them naming the key.
HOSTILE_CONFIG_VALUES = (None, True, -1, 1 << 64, 1.5, float("inf"), "", "\x00", "x" * 5000, [], [1], {},
                         {"a": {"b": {}}})


def _leaves(value, path=()):
    """Every key path of a JSON document (into dicts, and lists of dicts)."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield path + (key,)
            yield from _leaves(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            if isinstance(child, dict):
                yield path + (index,)
                yield from _leaves(child, path + (index,))


def _replaced(document, path, value):
    copy = json.loads(json.dumps(document))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def config_mutants(seeds: dict[str, bytes] | None = None, *, depth: int = 100_000) -> Iterator[tuple[str, bytes]]:
    """Hostile configuration documents as ``(description, bytes)``: ``depth``-deep JSON arrays and TOML
    inline arrays, bytes that are not UTF-8, NUL, and each JSON seed with every key's value replaced by
    each of :data:`HOSTILE_CONFIG_VALUES` (NaN and infinity as Python's ``json`` writes them)."""
    seeds = CONFIG_SEEDS if seeds is None else seeds
    yield f"JSON nested {depth} deep", b"[" * depth + b"]" * depth
    yield (f"JSON object nested {depth} deep",
           b'{"version": 2, "backend": ' + b'{"a":' * depth + b"1" + b"}" * (depth + 1))
    yield f"TOML nested {depth} deep", b"version = 2\nbackend = " + b"[" * depth + b"]" * depth + b"\n"
    yield "not UTF-8", b'{"version": 2, "id": "\xff\xfe"}'
    yield "NUL bytes", b"\0" * 64
    yield "BOM and garbage", b"\xef\xbb\xbf{" + b"\x80" * 16
    for name, document in seeds.items():
        if not name.endswith(".json"):
            continue
        parsed = json.loads(document)
        for path in _leaves(parsed):
            for value in HOSTILE_CONFIG_VALUES:
                yield (f"{name}: {'.'.join(path)} = {value!r:.40}",
                       json.dumps(_replaced(parsed, path, value)).encode())


# -- OCI image layouts -------------------------------------------------------------------------------

#: Whole-document replacements: not JSON, truncated, the wrong top-level type, nested past any
#: recursion limit.
HOSTILE_JSON_DOCUMENTS = ((b"", "empty"), (b"\xff\xfe", "not UTF-8"), (b"{", "truncated"), (b"[]", "a list"),
                          (b"null", "null"), (b"[" * 100_000 + b"]" * 100_000, "nested 100000 deep"))


def _blob_path(layout: str, digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return os.path.join(layout, "blobs", algorithm, hexdigest)


def _layout_documents(layout: str) -> list[tuple[str, str | None, tuple]]:
    """``(what, digest, chain)`` of index.json (digest None), each manifest (or nested index) and each
    config it reaches; ``chain`` is the digests from index.json down to the document's parent."""
    with open(os.path.join(layout, "index.json"), "rb") as f:
        index = json.load(f)
    found = [("index.json", None, ())]
    todo = [(desc, ()) for desc in index.get("manifests", [])]
    while todo:
        desc, chain = todo.pop(0)
        digest = desc["digest"]
        with open(_blob_path(layout, digest), "rb") as f:
            document = json.load(f)
        found.append((f"manifest {digest[:19]}", digest, chain))
        for child in document.get("manifests", []):
            todo.append((child, chain + (digest,)))
        if "config" in document:
            found.append((f"config of {digest[:19]}", document["config"]["digest"], chain + (digest,)))
    return found


def _write_document(layout: str, digest: str | None, chain: tuple, data: bytes) -> None:
    """Put ``data`` in place of the document ``digest`` (index.json for None) in ``layout`` and rewrite
    each document up ``chain`` so that it refers to the new one by its true digest and size."""
    old = digest
    while old is not None:
        new = "sha256:" + hashlib.sha256(data).hexdigest()
        _replace_file(_blob_path(layout, new), data)
        parent = chain[-1] if chain else None
        parent_path = os.path.join(layout, "index.json") if parent is None else _blob_path(layout, parent)
        with open(parent_path, "rb") as f:
            parent_doc = json.load(f)
        for desc in list(parent_doc.get("manifests", [])) + [parent_doc.get("config") or {}] \
                + list(parent_doc.get("layers", [])):
            if isinstance(desc, dict) and desc.get("digest") == old:
                desc["digest"], desc["size"] = new, len(data)
        data = json.dumps(parent_doc).encode()
        old, chain = parent, chain[:-1]
    _replace_file(os.path.join(layout, "index.json"), data)


def _replace_file(path: str, data: bytes) -> None:
    """A new file at ``path``: never written through the hard link to the original layout."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    with open(path, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class LayoutMutation:
    """One document of an OCI layout replaced: :attr:`data` in place of document :attr:`digest`
    (index.json for None), whose parents are :attr:`chain` (digests from index.json down)."""

    description: str
    digest: str | None
    chain: tuple
    data: bytes


def oci_layout_mutations(layout, *, values=HOSTILE_CONFIG_VALUES) -> list[LayoutMutation]:
    """What :func:`oci_layout_mutants` makes, as data (cheap to list and to sample): each document
    (index.json, every manifest and nested index, every config) with each key's value replaced by each
    of ``values``, and each replaced whole by :data:`HOSTILE_JSON_DOCUMENTS`."""
    layout = os.fspath(layout)
    mutations = []
    for what, digest, chain in _layout_documents(layout):
        path = os.path.join(layout, "index.json") if digest is None else _blob_path(layout, digest)
        with open(path, "rb") as f:
            parsed = json.load(f)
        for key in _leaves(parsed):
            for value in values:
                mutations.append(LayoutMutation(f"{what}: {'.'.join(map(str, key))} = {value!r:.40}", digest, chain,
                                                json.dumps(_replaced(parsed, key, value)).encode()))
        mutations += [LayoutMutation(f"{what}: {name}", digest, chain, data) for data, name in HOSTILE_JSON_DOCUMENTS]
    return mutations


def mutated_layout(layout, mutation: LayoutMutation, target) -> str:
    """A copy of ``layout`` at ``target`` (replaced if there) with ``mutation`` applied, digests and
    sizes up the chain made right again; blobs are hard links where possible, never written through."""
    layout, target = os.fspath(layout), os.fspath(target)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(layout, target, copy_function=_link_or_copy)
    _write_document(target, mutation.digest, mutation.chain, mutation.data)
    return target


def oci_layout_mutants(layout, workdir, *, values=HOSTILE_CONFIG_VALUES) -> Iterator[tuple[str, str]]:
    """Mutated copies of the OCI image layout ``layout`` as ``(description, path)``, one at a time in
    ``workdir/mutant`` (use each before asking for the next): :func:`oci_layout_mutations` applied."""
    target = os.path.join(os.fspath(workdir), "mutant")
    for mutation in oci_layout_mutations(layout, values=values):
        yield mutation.description, mutated_layout(layout, mutation, target)
    shutil.rmtree(target, ignore_errors=True)


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
