"""``rafs convert`` (the local part of ``nydusify convert``): an OCI image layout, directory or tar,
into a Nydus image layout; ``--check`` then validates the result as ``nydusify check`` does.

Flags keep nydusify's names and defaults (``--fs-version 6``, ``--compressor zstd``,
``--fs-chunk-size 0x100000``, ``--platform linux/amd64``); ``--prefetch-patterns`` reads the patterns
from standard input, one absolute path a line, or from the file it names (a ``rafs mount
--access-pattern-file`` trace).
"""

from __future__ import annotations

import sys

from rafs.cli.create import parse_batch_size, parse_chunk_size
from rafs.errors import InvalidArgumentError
from rafs.oci import Converter, ConvertOptions
from rafs.oci.check import check_image
from rafs.text import printable

from . import checks, progress


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert an OCI image layout (dir or tar) into a Nydus image layout",
                       description="Convert an OCI image to a Nydus image, as nydusify convert does, between "
                       "OCI image layouts (directories, or tar archives when the path ends in .tar).")
    p.add_argument("--source", "--source-archive", required=True, dest="source",
                   help="source OCI image layout: a directory or a tar of one")
    p.add_argument("--target", "--target-archive", required=True, dest="target",
                   help="target OCI image layout: a directory, or a tar when the name ends in .tar")
    p.add_argument("--fs-version", default="6", choices=["5", "6"], help="RAFS version (default 6)")
    p.add_argument("--compressor", default="zstd", choices=["none", "lz4_block", "zstd"],
                   help="algorithm to compress image data (default zstd)")
    p.add_argument("--fs-chunk-size", "--chunk-size", dest="chunk_size",
                   help="size of data chunks, a power of two in 0x1000..0x1000000 (default 0x100000)")
    p.add_argument("--fs-align-chunk", action="store_true", help="align uncompressed chunks to 4K (RAFS v5)")
    p.add_argument("--batch-size", default="0", help="merge small chunks into batch chunks of this size: 0 "
                   "(off) or, for RAFS v6, a power of two in 0x1000..0x1000000 not above the chunk size")
    p.add_argument("--prefetch-patterns", nargs="?", const="-", metavar="FILE",
                   help="read prefetch patterns (absolute paths) from standard input, or from FILE (paths one "
                   "a line, or the JSON access records of rafs mount --access-pattern-file)")
    p.add_argument("--prefetch-dir", help="prefetch one directory (shortcut for a single pattern)")
    platforms = p.add_mutually_exclusive_group()
    platforms.add_argument("--platform", default="linux/amd64",
                           help="comma-separated os/arch[/variant] to convert (default linux/amd64)")
    platforms.add_argument("--all-platforms", action="store_true", help="convert every platform of an index")
    p.add_argument("--oci", action="store_true", help="convert Docker media types to OCI ones")
    p.add_argument("--merge-platform", action="store_true",
                   help="put the Nydus manifests beside the source ones in one index")
    p.add_argument("--with-referrer", action="store_true", help="point the manifest's subject at the source")
    p.add_argument("--source-reference", help="source image name for the nydus-source-reference annotation")
    p.add_argument("--work-dir", help="working directory for spooled layers and bootstraps")
    p.add_argument("--workers", type=int, help="layers converted at once (default: one per CPU)")
    p.add_argument("--check", action="store_true", help="check the converted image against the source")
    p.set_defaults(func=run)


def run(args) -> int:
    patterns = None
    if args.prefetch_patterns and args.prefetch_dir:
        raise InvalidArgumentError("--prefetch-patterns and --prefetch-dir exclude each other")
    if args.prefetch_patterns == "-":
        progress.prompt_if_terminal(args, "--prefetch-patterns")
        patterns = checks.stdin_lines("--prefetch-patterns")
    elif args.prefetch_patterns:
        from rafs.serve.trace import read_pattern_file
        patterns = read_pattern_file(args.prefetch_patterns)
    elif args.prefetch_dir:
        patterns = [args.prefetch_dir]
    if args.workers is not None and args.workers < 1:
        raise InvalidArgumentError("--workers must be at least 1")
    options = ConvertOptions(fs_version=int(args.fs_version), compressor=args.compressor,
                             chunk_size=parse_chunk_size(args.chunk_size), aligned_chunk=args.fs_align_chunk,
                             batch_size=parse_batch_size(args.batch_size),
                             prefetch_patterns=patterns, platforms=args.platform.split(","),
                             all_platforms=args.all_platforms, docker2oci=args.oci,
                             merge_platform=args.merge_platform, with_referrer=args.with_referrer,
                             source_reference=args.source_reference, workers=args.workers,
                             work_dir=args.work_dir)
    with progress.bar(args, "converting") as report:
        result = Converter(args.source, args.target, options).run(progress=report)
    for image in result.images:
        print(f"converted {image.source['digest']} -> {image.target['digest']} "
              f"({len(image.blob_digests)} blobs)", file=sys.stderr)
    print(f"target: {result.target}", file=sys.stderr)
    if args.check:
        report = check_image(result.target, source=args.source)
        for problem in report.problems:
            print(f"check: {printable(problem)}", file=sys.stderr)
        if not report.ok:
            return 1
        print(f"check passed: {len(report.manifests)} manifest(s), {report.files_compared} entries compared "
              "with the source", file=sys.stderr)
    return 0
