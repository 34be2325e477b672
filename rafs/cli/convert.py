"""``rafs convert`` (``nydusify convert``): an OCI image, from a layout (directory or tar) or a registry
(``docker://HOST/REPO:TAG``), into a Nydus image in a layout or a registry; ``--check`` then validates
the result as ``nydusify check`` does. ``rafs copy`` (``nydusify copy``) copies an image with all its
blobs between registries, or to and from a layout.

A registry source is pulled into a temporary layout (streamed, every blob checked against its digest)
and a registry target is pushed from one (blobs the registry has already are skipped); the temporary
layouts live under ``--work-dir`` (default the system's temporary directory) and are removed at the end.

Flags keep nydusify's names and defaults (``--fs-version 6``, ``--compressor zstd``,
``--fs-chunk-size 0x100000``, ``--platform linux/amd64``); ``--prefetch-patterns`` reads the patterns
from standard input, one absolute path a line, or from the file it names (a ``rafs mount
--access-pattern-file`` trace).
"""

from __future__ import annotations

import os
import shutil
import sys

import rafs
from rafs.errors import InvalidArgumentError
from rafs.options import COMPRESSORS, FS_VERSIONS
from rafs.text import printable

from . import checks, progress
from .create import parse_batch_size, parse_chunk_size


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert an OCI image layout (dir or tar) into a Nydus image layout",
                       description="Convert an OCI image to a Nydus image, as nydusify convert does, between "
                       "OCI image layouts (directories, or tar archives when the path ends in .tar).")
    p.add_argument("--source", "--source-archive", dest="source",
                   help="source OCI image: a layout directory, a tar of one, or docker://HOST/REPO:TAG")
    p.add_argument("--target", "--target-archive", dest="target",
                   help="target: an OCI layout directory, a tar when the name ends in .tar, or docker://HOST/REPO:TAG")
    p.add_argument("--from-list", metavar="FILE",
                   help="convert many images: FILE has one 'SOURCE TARGET' pair a line (# comments)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --from-list, run the per-layer work on the Dask distributed scheduler at ADDRESS "
                   "(tcp://HOST:8786); its workers pull and push the layers themselves")
    add_registry_arguments(p, "source", "target")
    p.add_argument("--fs-version", default="6", choices=[str(v) for v in FS_VERSIONS],
                   help="RAFS version (default 6)")
    p.add_argument("--compressor", default="zstd", choices=list(COMPRESSORS),
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

    c = sub.add_parser("copy", help="copy an image with all its blobs between registries and OCI layouts",
                       description="Copy an image (a manifest or a whole index, with every blob) as nydusify copy "
                       "does: from a registry (docker://HOST/REPO:TAG) or an OCI layout directory, to a registry "
                       "or a new OCI layout directory.")
    c.add_argument("source", metavar="SOURCE", help="docker://HOST/REPO:TAG or an OCI layout directory")
    c.add_argument("target", metavar="TARGET", help="docker://HOST/REPO:TAG or a new OCI layout directory")
    add_registry_arguments(c, "source", "target")
    c.add_argument("--work-dir", help="directory for the temporary layout of a registry-to-registry copy")
    c.set_defaults(func=run_copy)


def add_registry_arguments(parser, *sides: str) -> None:
    for side in sides:
        parser.add_argument(f"--{side}-insecure", action="store_true",
                            help=f"do not verify the TLS certificate of the {side} registry")
    parser.add_argument("--plain-http", action="store_true", help="talk to the registries over http, not https")


def _registry_options(args, side: str) -> dict:
    return {"insecure": getattr(args, f"{side}_insecure"), "plain_http": args.plain_http}


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
    options = rafs.ConvertOptions(fs_version=int(args.fs_version), compressor=args.compressor,
                                  chunk_size=parse_chunk_size(args.chunk_size), aligned_chunk=args.fs_align_chunk,
                                  batch_size=parse_batch_size(args.batch_size),
                                  prefetch_patterns=patterns, platforms=args.platform.split(","),
                                  all_platforms=args.all_platforms, docker2oci=args.oci,
                                  merge_platform=args.merge_platform, with_referrer=args.with_referrer,
                                  source_reference=args.source_reference, workers=args.workers,
                                  work_dir=args.work_dir)
    if args.from_list:
        if args.source or args.target:
            raise InvalidArgumentError("--from-list replaces --source and --target")
        return _convert_list(args, options)
    if args.scheduler:
        raise InvalidArgumentError("--scheduler goes with --from-list")
    if not (args.source and args.target):
        raise InvalidArgumentError("--source and --target are required (or --from-list FILE)")
    remote_source, remote_target = rafs.is_reference(args.source), rafs.is_reference(args.target)
    if not (remote_source or remote_target):
        return _convert(args, lambda report: rafs.Converter(args.source, args.target, options).run(progress=report),
                        args.source)
    # a registry on either side: source layers are streamed from it and converted blobs pushed as
    # each is made, by the worker that made it; the documents go up last
    source = rafs.RegistryLayout(args.source, _registry_options(args, "source")) if remote_source else args.source
    if not remote_target:
        return _convert(args, lambda report: rafs.Converter(source, args.target, options).run(progress=report), source)
    scratch = checks.scratch_dir(args.work_dir)
    try:
        layout = os.path.join(scratch, "target")
        endpoint = rafs.RegistryEndpoint(args.target, _registry_options(args, "target"))
        status = _convert(args, lambda report: rafs.Converter(source, layout, options, push_to=endpoint)
                          .run(progress=report), source)
        if status == 0:
            digest = rafs.push_image(layout, args.target, _registry_options(args, "target"),
                          mount_from=rafs.same_registry_repo(args.source, args.target))
            print(f"pushed {args.target} ({digest})", file=sys.stderr)
        return status
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _convert_list(args, options) -> int:
    pairs = rafs.read_convert_list(args.from_list)
    done = [0]

    def finished(pair, result, digest) -> None:
        done[0] += 1
        where = f"{pair.target} ({digest})" if digest else pair.target
        print(f"[{done[0]}/{len(pairs)}] converted {pair.source} -> {where}", file=sys.stderr)

    rafs.convert_many(pairs, options, scheduler=args.scheduler, source_options=_registry_options(args, "source"),
                 target_options=_registry_options(args, "target"), work_dir=args.work_dir, on_done=finished)
    return 0


def _convert(args, run, source) -> int:
    with progress.bar(args, "converting") as report:
        result = run(report)
    for image in result.images:
        print(f"converted {image.source['digest']} -> {image.target['digest']} "
              f"({len(image.blob_digests)} blobs)", file=sys.stderr)
    print(f"target: {result.target}", file=sys.stderr)
    if args.check:
        report = rafs.check_oci_image(result.target, source=source)
        for problem in report.problems:
            print(f"check: {printable(problem)}", file=sys.stderr)
        if not report.ok:
            return 1
        print(f"check passed: {len(report.manifests)} manifest(s), {report.files_compared} entries compared "
              "with the source", file=sys.stderr)
    return 0


def run_copy(args) -> int:
    remote_source, remote_target = rafs.is_reference(args.source), rafs.is_reference(args.target)
    if not (remote_source or remote_target):
        raise InvalidArgumentError("copy needs a registry on at least one side (docker://HOST/REPO:TAG)")
    if not remote_source:
        digest = rafs.push_image(args.source, args.target, _registry_options(args, "target"))
    elif not remote_target:
        rafs.pull_image(args.source, args.target, _registry_options(args, "source"))
        digest = None
    else:
        scratch = checks.scratch_dir(args.work_dir)
        try:
            layout = rafs.pull_image(args.source, os.path.join(scratch, "image"),
                                     _registry_options(args, "source"))
            digest = rafs.push_image(layout, args.target, _registry_options(args, "target"),
                                     mount_from=rafs.same_registry_repo(args.source, args.target))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"copied {args.source} to {args.target}" + (f" ({digest})" if digest else ""), file=sys.stderr)
    return 0
