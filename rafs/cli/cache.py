"""``rafs cache``: report, verify and prune a blob cache ``work_dir`` (nydusd's blobcache/filecache).

``rafs cache report --work-dir DIR [-B BOOT ...]``, ``rafs cache verify --work-dir DIR -B BOOT ...`` and
``rafs cache prune --work-dir DIR -B BOOT ... [--dry-run]``; the images' blobs are only needed when the
cache holds no ``.blob.meta`` for them (``-D`` or ``-C`` say where they are).
"""

from __future__ import annotations

import contextlib
import json
import sys

import rafs
from rafs.errors import InvalidArgumentError
from rafs.text import printable

from . import checks


def register(sub) -> None:
    p = sub.add_parser("cache", help="report, verify or prune a blob cache work_dir")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("report", "per blob: chunks and bytes cached, and which images use it"),
                       ("verify", "check every cached chunk the images know against its digest"),
                       ("prune", "remove the cache files of blobs no given image references")):
        a = actions.add_parser(name, help=text)
        a.add_argument("--work-dir", required=True, help="the cache directory (the cache's work_dir)")
        a.add_argument("-B", "--bootstrap", action="append", default=[], help="an image whose blobs to "
                       "look at (repeat for more)" + ("; at least one" if name != "report" else ""))
        a.add_argument("-D", "--blob-dir", help="directory of the images' data blobs")
        a.add_argument("-C", "--config", help="nydusd configuration file for the images' blobs")
        if name == "prune":
            a.add_argument("--dry-run", action="store_true", help="only list what would be removed")
        else:
            a.add_argument("--json", action="store_true", help="print JSON for machines")
        a.set_defaults(func=run)


def run(args) -> int:
    from rafs import cachetool
    checks.input_dir("--work-dir", args.work_dir)
    checks.exclusive(args, ("config", "--config <config>"), ("blob_dir", "--blob-dir <blob-dir>"))
    checks.input_dir("--blob-dir", args.blob_dir)
    checks.input_file("--config", args.config)
    if args.action != "report" and not args.bootstrap:
        raise InvalidArgumentError(f"cache {args.action} needs at least one --bootstrap")
    with contextlib.ExitStack() as stack:
        images = []
        for path in args.bootstrap:
            checks.input_file("--bootstrap", path)
            images.append(stack.enter_context(rafs.open(path, blob_dir=args.blob_dir, config=args.config)))
        if args.action == "report":
            return _report(cachetool.report(args.work_dir, images), args.json)
        if args.action == "verify":
            return _verify(cachetool.verify(args.work_dir, images), args.json)
        for name in cachetool.prune(args.work_dir, images, dry_run=args.dry_run):
            print(("would remove " if args.dry_run else "removed ") + printable(name))
    return 0


def _report(found, as_json: bool) -> int:
    blobs, others = found
    if as_json:
        json.dump({"blobs": [b.as_dict() for b in blobs], "other_files": others}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'blob id':<64}  {'chunks':>15}  {'cached bytes':>25}  on disk  images")
    for b in blobs:
        chunks = f"{b.ready_chunks}/{b.chunk_count}" if b.ready_chunks is not None else "?"
        cached = f"{b.cached_bytes}/{b.size}" if b.cached_bytes is not None else "?"
        print(f"{printable(b.blob_id):<64}  {chunks:>15}  {cached:>25}  {sum(b.files.values()):>7}  "
              f"{', '.join(printable(i) for i in b.images) or '-'}" + (f"  ({printable(b.problem)})" if b.problem
                                                                       else ""))
    for name in others:
        print(f"other file: {printable(name)}")
    return 0


def _verify(result, as_json: bool) -> int:
    if as_json:
        json.dump({"checked": result.checked, "unchecked": result.unchecked,
                   "bad": [{"blob_id": b, "chunk": i, "problem": p} for b, i, p in result.bad]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for blob_id, index, problem in result.bad:
            print(f"blob {printable(blob_id)} chunk {index}: {problem}")
        print(f"{result.checked} cached chunks checked, {len(result.bad)} bad, {result.unchecked} without a digest")
    return 1 if result.bad else 0
