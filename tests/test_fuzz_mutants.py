"""Mutation fuzzing of real images: the reference's fixtures and images rafs builds.

Every mutant (bit flips, truncations, every integer field of every structure set to 0, 1, max, max-1
and to offsets just past the ends, decompression bombs, directory cycles) is opened, walked, read,
checked and unpacked, and its blobs are run through every blob parser. Each must succeed or raise a
RafsError, within a time limit and a heap budget proportional to the input's size: never another
exception, never a hang, never a huge allocation.

The "ci" hypothesis profile runs a fixed, seeded sample of the mutants; HYPOTHESIS_PROFILE=deep runs
all of them plus blind word mutations. With RAFS_FUZZ_STATS=<file> each test appends how many
mutants it ran and what they gave (one JSON line per test).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import random
import time

import pytest
from hypothesis import settings

import rafs
from rafs.blob import layout as blob_layout
from rafs.blob.toc import read_toc, toc_bytes
from rafs.testing import (BytesSource, Entry, Extent, FileData, bit_flips, blob_structures, build_tree,
                          check_mutant, directory, field_extremes, file, hardlink, memory_budget, set_field,
                          symlink, truncations, v5_structures, v6_structures, word_extremes, zstd_bomb)
from rafs.testing.exercise import check_blob_mutant, exercise
from rafs.v5 import layout as v5_layout
from rafs.v5.reader import V5Reader
from rafs.v6.reader import V6Reader

DEEP = settings.default.max_examples >= 1000
SECONDS = 20.0


def pick(mutants, count: int, seed: int = 0) -> list:
    """All mutants in the deep profile, else a fixed sample of ``count`` of them."""
    mutants = list(mutants)
    if DEEP or len(mutants) <= count:
        return mutants
    return random.Random(seed).sample(mutants, count)


def scaled(count: int) -> int:
    return count * 25 if DEEP else count


def record(request, outcomes: collections.Counter, started: float) -> None:
    path = os.environ.get("RAFS_FUZZ_STATS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": request.node.nodeid, "mutants": sum(outcomes.values()),
                                "seconds": round(time.monotonic() - started, 1), "outcomes": dict(outcomes)}) + "\n")


class Subject:
    """An image under mutation: bootstrap bytes (None when inline), blobs by id, their model Blobs."""

    def __init__(self, name, bootstrap, blobs: dict, infos: list, inline: bool = False):
        self.name, self.bootstrap, self.blobs, self.infos, self.inline = name, bootstrap, blobs, infos, inline

    @property
    def budget(self) -> int:
        return memory_budget(self.bootstrap or b"", *self.blobs.values())

    def check_bootstrap(self, description, mutant, memory: str = "rss") -> str:
        """The verdict on a mutated bootstrap: "ok", "problems" (found by check) or a rafs error."""
        return check_mutant(f"{self.name}: {description}", mutant, seconds=SECONDS, max_memory=self.budget,
                            memory=memory, verdict=True, blobs={k: BytesSource(v) for k, v in self.blobs.items()})

    def check_blob(self, description, blob_id, mutant, memory: str = "rss") -> str:
        """The verdict of reading the image over a mutated blob, or failing that of the blob parsers."""
        what = f"{self.name} blob {blob_id[:12]}: {description}"
        bounds = dict(seconds=SECONDS, max_memory=self.budget, memory=memory)
        if self.inline:
            outcome = check_mutant(what, io.BytesIO(mutant), verdict=True, **bounds)
        else:
            blobs = {k: BytesSource(mutant if k == blob_id else v) for k, v in self.blobs.items()}
            outcome = check_mutant(what, self.bootstrap, verdict=True, blobs=blobs, **bounds)
        info = next((b for b in self.infos if b.blob_id == blob_id), None)
        parsers = check_blob_mutant(what, mutant, info, **bounds)
        return outcome if outcome != "ok" else parsers


# -- subjects ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def v5_subject(v5_fixture):
    bootstrap, blob_dir, _ = v5_fixture
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        infos = list(image.blobs)
    blobs = {b.blob_id: (blob_dir / b.blob_id).read_bytes() for b in infos}
    return Subject("v5 fixture", bootstrap.read_bytes(), blobs, infos)


@pytest.fixture(scope="module")
def v6_subject(v6_fixture):
    bootstrap, blob_dir = v6_fixture
    with rafs.open(bootstrap, blob_dir=blob_dir) as image:
        infos = list(image.blobs)
    blobs = {b.blob_id: (blob_dir / b.blob_id).read_bytes() for b in infos}
    return Subject("v6 fixture", bootstrap.read_bytes(), blobs, infos)


def generated_tree() -> dict:
    tree = {
        b"/": directory(),
        b"/dir": directory(mode=0o750, xattrs={b"user.k": b"v"}),
        b"/dir/small": file(b"hello, rafs\n", xattrs={b"user.a": b"1", b"user.b": b""}),
        b"/dir/boundary": file(FileData(0x1001, (Extent(0, 0x1001, 42),))),
        b"/dir/link": hardlink(b"/dir/small"),
        b"/sparse": file(FileData(0x5000, (Extent(0xFFE, 4, b"ab"), Extent(0x3000, 0x1000, 7)))),
        b"/text": file(FileData(0x3000, (Extent(0, 0x3000, b"compressible "),))),
        b"/sym": symlink(b"dir/small"),
        b"/fifo": Entry("fifo", mode=0o644),
        b"/\xff\xfe name": file(b"not utf-8"),
        b"/empty": file(b""),
    }
    if os.geteuid() == 0:
        tree[b"/dev"] = Entry("char", mode=0o600, rdev=os.makedev(1, 3))
    return tree


GENERATED = {
    "v5-zstd": dict(fs_version=5, compressor="zstd", digester="sha256", chunk_size=0x1000),
    "v5-lz4": dict(fs_version=5, compressor="lz4_block", digester="blake3", chunk_size=0x1000),
    "v6-zstd-toc": dict(fs_version=6, compressor="zstd", digester="blake3", chunk_size=0x1000,
                        features=("blob-toc",)),
    "v6-none": dict(fs_version=6, compressor="none", digester="sha256", chunk_size=0x2000),
    "v6-lz4-inline": dict(fs_version=6, compressor="lz4_block", digester="blake3", chunk_size=0x1000,
                          blob_inline_meta=True, features=("blob-toc",)),
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    subjects = {}
    for name, options in GENERATED.items():
        built = build_tree(generated_tree(), tmp_path_factory.mktemp(name), repeatable=True, **options)
        with built.open() as image:
            infos = list(image.blobs)
            assert exercise(built.source, **built.open_kwargs).summary == "ok"
        if built.blob_dir is None:
            blobs = {infos[0].blob_id: open(built.source, "rb").read()}
            subjects[name] = Subject(name, None, blobs, infos, inline=True)
        else:
            blobs = {b.blob_id: open(os.path.join(built.blob_dir, b.blob_id), "rb").read() for b in infos}
            subjects[name] = Subject(name, open(built.source, "rb").read(), blobs, infos)
    return subjects


def structures(subject: Subject):
    data = subject.bootstrap
    return v5_structures(data) if data[:4] == b"SFAR" else v6_structures(data)


def past_values(subject: Subject) -> set:
    """Values that point just past the end of the blobs (for chunk offsets and sizes)."""
    values = set()
    for blob in subject.blobs.values():
        values.update({len(blob), len(blob) + 1, len(blob) // 4096 + 1})
    for info in subject.infos:
        values.update({info.uncompressed_size, info.uncompressed_size + 1, info.chunk_count})
    return values


# -- bootstraps --------------------------------------------------------------------------------------

def run_bootstrap_mutants(request, subject: Subject, *, flips: int, cuts: int, fields: int, seed: int = 0):
    started, outcomes = time.monotonic(), collections.Counter()
    data = subject.bootstrap
    blind = list(truncations(data, cuts, seed=seed)) + list(bit_flips(data, scaled(flips), seed=seed))
    if DEEP:
        start = 8192 if data[:4] == b"SFAR" else 1024          # past the v5 superblock's reserved bytes
        blind += list(word_extremes(data, span=(start, start + 0x1000), sizes=(4,)))
    for description, mutant in blind:
        outcomes[subject.check_bootstrap(description, mutant)] += 1
    # size and offset fields are where huge allocations would come from: measure every allocation
    # (in the deep profile, for one mutant in eight: the rest are measured by peak RSS)
    fielded = pick(field_extremes(data, structures(subject), past=past_values(subject)), fields, seed)
    for i, (description, mutant) in enumerate(fielded):
        memory = "tracemalloc" if not DEEP or i % 8 == 0 else "rss"
        outcomes[subject.check_bootstrap(description, mutant, memory)] += 1
    record(request, outcomes, started)
    return outcomes


def test_v5_fixture_bootstrap_mutants(request, v5_subject):
    outcomes = run_bootstrap_mutants(request, v5_subject, flips=40, cuts=8, fields=50)
    assert outcomes["InvalidImageError"] >= 20, outcomes


def test_v6_fixture_bootstrap_mutants(request, v6_subject):
    outcomes = run_bootstrap_mutants(request, v6_subject, flips=100, cuts=20, fields=400)
    assert outcomes["InvalidImageError"] >= 50, outcomes


@pytest.mark.parametrize("name", [n for n in GENERATED if not GENERATED[n].get("blob_inline_meta")])
def test_generated_bootstrap_mutants(request, generated, name):
    outcomes = run_bootstrap_mutants(request, generated[name], flips=40, cuts=8, fields=100)
    assert sum(v for k, v in outcomes.items() if k != "ok") >= 40, outcomes


# -- blobs: data, CI, ToC ----------------------------------------------------------------------------

def run_blob_mutants(request, subject: Subject, *, flips: int, cuts: int, fields: int, seed: int = 0):
    started, outcomes = time.monotonic(), collections.Counter()
    for info in subject.infos:
        blob = subject.blobs[info.blob_id]
        found = blob_structures(blob, info)
        blind = list(truncations(blob, cuts, seed=seed)) + list(bit_flips(blob, scaled(flips), seed=seed))
        for description, mutant in blind:
            outcomes[subject.check_blob(description, info.blob_id, mutant)] += 1
        fielded = pick(field_extremes(blob, found, past=past_values(subject)), fields, seed)
        for i, (description, mutant) in enumerate(fielded):
            memory = "tracemalloc" if not DEEP or i % 8 == 0 else "rss"
            outcomes[subject.check_blob(description, info.blob_id, mutant, memory)] += 1
    record(request, outcomes, started)
    return outcomes


def test_v5_fixture_blob_mutants(request, v5_subject):
    # the blob is 3.5 MB and uncompressed: a few flips and cuts, each caught by chunk digests
    outcomes = run_blob_mutants(request, v5_subject, flips=6, cuts=4, fields=0)
    assert sum(v for k, v in outcomes.items() if k != "ok") >= 5, outcomes


def test_v6_fixture_blob_mutants(request, v6_subject):
    outcomes = run_blob_mutants(request, v6_subject, flips=120, cuts=20, fields=300)
    assert sum(v for k, v in outcomes.items() if k != "ok") >= 100, outcomes


@pytest.mark.parametrize("name", list(GENERATED))
def test_generated_blob_mutants(request, generated, name):
    outcomes = run_blob_mutants(request, generated[name], flips=40, cuts=8, fields=80)
    assert sum(v for k, v in outcomes.items() if k != "ok") >= 10, outcomes


def test_toc_fixture_mutants(request, fixtures):
    """The early v6 blob with an inline bootstrap and a ToC: every mutant opens (or not) cleanly."""
    started, outcomes = time.monotonic(), collections.Counter()
    path = next((fixtures / "toc").iterdir())
    blob = path.read_bytes()
    mutants = list(truncations(blob, 10)) + list(bit_flips(blob, scaled(80)))
    mutants += pick(field_extremes(blob, blob_structures(blob), past={len(blob), len(blob) + 1}), 150)
    for description, mutant in mutants:
        # a file object: rafs.open takes bytes for a bootstrap, but an inline blob is also read from
        outcomes[check_mutant(f"toc blob: {description}", io.BytesIO(mutant), seconds=SECONDS,
                              max_memory=memory_budget(blob), memory="rss", verdict=True)] += 1
        check_blob_mutant(f"toc blob: {description}", mutant, seconds=SECONDS, max_memory=memory_budget(blob))
    record(request, outcomes, started)
    assert outcomes["ok"] >= 1 and len(outcomes) > 1, outcomes


# -- decompression bombs -----------------------------------------------------------------------------

BOMB_SIZE = 256 << 20          # what the bombs inflate to; every declared size here is < 64 KiB
BOMBS = {"no content size": dict(), "true content size": dict(content_size=True),
         "lying content size": dict(claimed_size=0x1000)}


def _chunk_records(subject: Subject):
    """Chunk info records the reader uses (v5: each file's, except the copies in the records of later
    hardlinks, which readers never consult; v6: the chunk info table)."""
    found = []
    for s in structures(subject):
        if s.name.startswith("v5 inode ") and " chunk " in s.name:
            index = int(s.name.split()[2])
            if V5Reader(subject.bootstrap).record(index)[0].i_ino == index:
                found.append(s)
        elif s.name.startswith("v6 chunk info "):
            found.append(s)
    return found


@pytest.mark.parametrize("kind", list(BOMBS))
@pytest.mark.parametrize("name", ["v5-zstd", "v6-zstd-toc"])
def test_zstd_chunk_bombs(generated, name, kind):
    """A chunk record pointing at a frame that inflates to 256 MiB: refused within the declared size."""
    subject = generated[name]
    blob_id = subject.infos[0].blob_id
    bomb = zstd_bomb(BOMB_SIZE, **BOMBS[kind])
    blob = subject.blobs[blob_id] + bomb
    records = _chunk_records(subject)
    assert records, "the image has no chunk records to point at the bomb"
    data = subject.bootstrap
    for located in records:
        data = set_field(data, located, "compressed_offset", len(subject.blobs[blob_id]))
        data = set_field(data, located, "compressed_size", len(bomb))
        data = set_field(data, located, "flags", 1)                      # COMPRESSED
    outcome = check_mutant(f"{name} chunk bomb ({kind})", data, seconds=SECONDS,
                           max_memory=memory_budget(data, blob),
                           blobs={blob_id: BytesSource(blob)})
    assert outcome in ("InvalidImageError", "DigestMismatchError"), outcome


@pytest.mark.parametrize("kind", list(BOMBS))
def test_zstd_ci_bomb(v6_subject, kind):
    """The blob meta (CI) replaced by a zstd frame inflating to 256 MiB for a declared 32 bytes."""
    info = v6_subject.infos[0]
    blob = v6_subject.blobs[info.blob_id]
    header = bytearray(blob[info.ci_offset + info.ci_compressed_size:][:blob_layout.BLOB_CCT_HEADER_SIZE])
    bomb = zstd_bomb(BOMB_SIZE, **BOMBS[kind])
    at = len(blob)
    header[8:12] = (3).to_bytes(4, "little")                 # s_ci_compressor = zstd
    header[16:24] = at.to_bytes(8, "little")                 # s_ci_offset
    header[24:32] = len(bomb).to_bytes(8, "little")          # s_ci_compressed_size
    mutant = blob + bomb + bytes(header)
    bombed = dataclasses.replace(info, ci_compressor="zstd", ci_offset=at, ci_compressed_size=len(bomb))
    with pytest.raises(rafs.InvalidImageError):
        from rafs.blob.meta import load_blob_meta
        from rafs.testing import memory_limit, time_limit
        with time_limit(SECONDS, "CI bomb"), memory_limit(memory_budget(mutant), "CI bomb"):
            load_blob_meta(bombed, BytesSource(mutant))
    check_blob_mutant("CI bomb", mutant, bombed, seconds=SECONDS, max_memory=memory_budget(mutant))


@pytest.mark.parametrize("kind", list(BOMBS))
def test_zstd_toc_entry_bomb(fixtures, kind):
    """The inline bootstrap's ToC entry pointing at a frame inflating to 256 MiB (declared 20 KiB)."""
    blob = next((fixtures / "toc").iterdir()).read_bytes()
    toc = read_toc(BytesSource(blob))
    bomb = zstd_bomb(BOMB_SIZE, **BOMBS[kind])
    body = blob[:toc.offset] + bomb
    entries = [dataclasses.replace(e, compressed_offset=toc.offset, compressed_size=len(bomb),
                                   flags=blob_layout.TOC_ENTRY_COMPRESSION_ZSTD)
               if e.name == blob_layout.TOC_ENTRY_BOOTSTRAP else e for e in toc]
    assert any(e.name == blob_layout.TOC_ENTRY_BOOTSTRAP for e in entries)
    mutant = body + toc_bytes(entries)
    outcome = check_mutant(f"ToC bomb ({kind})", io.BytesIO(mutant), seconds=SECONDS,
                           max_memory=memory_budget(mutant))
    assert outcome == "InvalidImageError", outcome


# -- directory cycles and chunks past the blob -------------------------------------------------------

@pytest.mark.parametrize("name", ["v6-none", "v6-zstd-toc"])
def test_v6_directory_cycles(generated, name):
    """Every directory entry redirected to its own directory or to the root: a loop, always refused."""
    subject = generated[name]
    data = subject.bootstrap
    root = V6Reader(data).root_ino
    dirents = [s for s in v6_structures(data) if s.name.startswith("v6 dirent")]
    assert dirents
    count = 0
    for located in dirents:
        index = int(located.name.split()[2])
        owner = int(located.name.split("nid ")[1].split()[0])
        if index < 2:
            continue                                     # "." and ".." are not followed
        for target in {owner, root}:
            mutant = set_field(data, located, "e_nid", target)
            outcome = subject.check_bootstrap(f"{located.name} -> nid {target}", mutant)
            assert outcome == "InvalidImageError", (located.name, target, outcome)
            count += 1
    assert count >= 4


def test_v5_directory_cycles(v5_subject):
    """Child ranges that start at or before the directory, and children whose ino is an ancestor."""
    data = v5_subject.bootstrap
    records = {s.name: s for s in v5_structures(data) if s.name.startswith("v5 inode ") and s.name[9:].isdigit()}
    reader = V5Reader(data)
    tried = 0
    for name, located in records.items():
        index = int(name.split()[-1])
        raw, _ = reader.record(index)
        if raw.i_mode & 0o170000 == 0o040000 and raw.i_child_count:
            for first in (index, 1):
                mutant = set_field(data, located, "i_child_index", first)
                assert v5_subject.check_bootstrap(f"{name} children from {first}", mutant) == "InvalidImageError"
                tried += 1
        if raw.i_mode & 0o170000 == 0o040000 and index > 1:
            mutant = set_field(data, located, "i_ino", 1)           # a directory entry that is the root again
            assert v5_subject.check_bootstrap(f"{name} i_ino = 1", mutant) != "ok"
            tried += 1
    assert tried >= 10


@pytest.mark.parametrize("name", ["v5-zstd", "v6-none", "v6-zstd-toc"])
def test_chunks_past_the_blob(generated, name):
    subject = generated[name]
    blob_size = len(next(iter(subject.blobs.values())))
    for located in _chunk_records(subject):
        for field, value in (("compressed_offset", blob_size), ("compressed_offset", blob_size - 1),
                             ("compressed_size", blob_size + 1), ("uncompressed_size", 0xFF_FFFF),
                             ("compressed_offset", 2**64 - 1), ("compressed_size", 2**32 - 1)):
            mutant = set_field(subject.bootstrap, located, field, value)
            outcome = subject.check_bootstrap(f"{located.name} .{field} = {value:#x}", mutant)
            assert outcome != "ok" or field == "uncompressed_size", (located.name, field, outcome)


def test_huge_declared_sizes_stay_bounded(generated):
    """Regular files declaring 2^62 bytes (holes past their chunks): reads stop at the exerciser's
    per-file limit and unpacking at its output limit, quickly and within the memory budget."""
    subject = generated["v5-zstd"]
    data = subject.bootstrap
    reader = V5Reader(data)
    for located in v5_structures(data):
        if located.schema is v5_layout.Inode and reader.record(int(located.name.split()[2]))[0].i_mode & 0o170000 \
                == 0o100000:
            data = set_field(data, located, "i_size", 1 << 62)
    started = time.monotonic()
    assert subject.check_bootstrap("every regular file's i_size = 2^62", data, "tracemalloc") == "ok"
    assert time.monotonic() - started < SECONDS
