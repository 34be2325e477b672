"""``rafs create`` (nydus-image create): build a bootstrap and a data blob from a source.

Flags, defaults and refusals follow src/bin/nydus-image/main.rs; prefetch patterns are read from
standard input when ``--prefetch-policy`` is not ``none``.
"""

from __future__ import annotations

import json
import sys

import rafs
from rafs.errors import InvalidArgumentError
from rafs.options import (BLOB_LAYOUTS, COMPRESSORS, DIGESTERS, FEATURES, FS_VERSIONS, PREFETCH_POLICIES,
                          SOURCE_TYPES, WHITEOUT_SPECS)

from . import checks, progress


def register(sub) -> None:
    p = sub.add_parser("create", help="create a RAFS filesystem (bootstrap and data blob) from a directory",
                       description="Create RAFS filesystems as nydus-image create does.")
    p.add_argument("source", metavar="SOURCE", help="source from which to build the RAFS filesystem")
    p.add_argument("-t", "--type", "--source-type", dest="type", default="dir-rafs", choices=list(SOURCE_TYPES),
                   help="conversion type (default dir-rafs)")
    p.add_argument("-B", "--bootstrap", help="file path to save the generated RAFS metadata blob")
    p.add_argument("-D", "--blob-dir", help="directory to save generated RAFS metadata and data blobs "
                   "(blob named by its id, bootstrap by the sha256 of its bytes)")
    p.add_argument("-b", "--blob", help="file path to save the generated RAFS data blob (may be a FIFO)")
    p.add_argument("--blob-inline-meta", "--inline-bootstrap", action="store_true",
                   help="inline RAFS metadata and blob metadata into the data blob")
    p.add_argument("-v", "--fs-version", default="6", choices=[str(v) for v in FS_VERSIONS],
                   help="RAFS format version (default 6)")
    p.add_argument("--compressor", choices=list(COMPRESSORS),
                   help="algorithm to compress data chunks (default zstd)")
    p.add_argument("--digester", default="blake3", choices=list(DIGESTERS),
                   help="algorithm to digest data chunks (default blake3)")
    p.add_argument("--chunk-size", help="size of data chunks, a power of two in 0x1000..0x1000000 "
                   "(hex with 0x, or decimal; default 0x100000)")
    p.add_argument("--whiteout-spec", default="oci", choices=list(WHITEOUT_SPECS),
                   help="type of whiteout specification (default oci)")
    p.add_argument("--features", choices=list(FEATURES), help="enable features (blob-toc: chunk digests and a ToC)")
    p.add_argument("--repeatable", action="store_true", help="generate reproducible RAFS metadata (uid/gid 0)")
    p.add_argument("--prefetch-policy", default="none", choices=list(PREFETCH_POLICIES),
                   help="data prefetch policy; patterns are read from stdin, one absolute path a line")
    p.add_argument("--prefetch-patterns", metavar="FILE", help="read prefetch patterns from FILE instead of "
                   "standard input: absolute paths one a line, or the JSON access records of rafs mount "
                   "--access-pattern-file; implies --prefetch-policy fs unless another policy is given")
    p.add_argument("--aligned-chunk", action="store_true",
                   help="align uncompressed data chunks to 4K, only for RAFS v5 (v6 is always aligned)")
    p.add_argument("--blob-layout", default="packed", choices=list(BLOB_LAYOUTS),
                   help="packed: chunks back to back, as nydus-image writes them (default); mapped: with "
                   "-v 6 --compressor none, every chunk at its uncompressed offset so the kernel's EROFS "
                   "can mount the bootstrap with the blob itself as device (rafs only)")
    p.add_argument("--parent-bootstrap", help="file path of the parent/referenced RAFS metadata blob: build "
                   "a new layer on it (its blobs kept, whiteouts applied by --whiteout-spec)")
    p.add_argument("--chunk-dict", help="chunk dictionary bootstrap (bootstrap=PATH or PATH): chunks found "
                   "in it are not stored again but point at its blobs, which join the blob table")
    p.add_argument("--blob-id", help="id of the generated data blob, recorded in the bootstrap and naming the "
                   "blob in --blob-dir, instead of the sha256 of its bytes (at most 255 characters; RAFS v6 "
                   "holds 64)")
    p.add_argument("--blob-offset", default="0", help="file offset the data will be stored at, for data "
                   "blobs stored inside tar files: chunk records point past it (decimal, default 0)")
    p.add_argument("--blob-data-size", help="data blob size for --type estargztoc-ref (hex); the types "
                   "rafs builds ignore it, as nydus-image does")
    p.add_argument("--blob-cache-dir", help="directory to write nydusd's cache files of the blob into "
                   "(<blob id>.blob.data and <blob id>.blob.meta) instead of a data blob; chunks are "
                   "stored uncompressed")
    p.add_argument("-C", "--config", help="nydusd configuration file for the storage backend and cache "
                   "(checked; rafs reads the parent bootstrap's metadata only, so no blob is fetched)")
    p.add_argument("--batch-size", default="0", help="merge small chunks into batch chunks of this size: "
                   "0 (off, the default) or, with -v 6, a power of two in 0x1000..0x1000000 not above the "
                   "chunk size (hex with 0x, or decimal)")
    p.add_argument("-E", "--encrypt", action="store_true",
                   help="encrypt the generated data blob (chunks and chunk-info array, AES-128-XTS; the key "
                   "is in the bootstrap's blob table)")
    p.add_argument("--disable-check", action="store_true",
                   help="skip the validation of the generated RAFS metadata after the build")
    p.add_argument("-J", "--output-json", help="file path to save the operation result in JSON format")
    p.set_defaults(func=run)


def parse_chunk_size(text: str | None) -> int:
    """``--chunk-size``: hex with a 0x prefix or decimal, as get_chunk_size in the reference."""
    if text is None:
        return 0x100000
    try:
        value = int(text[2:], 16) if text[:2].lower() == "0x" else int(text, 10)
    except ValueError:
        raise InvalidArgumentError(f"invalid chunk size {text}") from None
    if value > 0x1000000 or value < 0x1000 or value & (value - 1):
        raise InvalidArgumentError(f"invalid chunk size: {value}")
    return value


def parse_batch_size(text: str) -> int:
    """``--batch-size``: hex with a 0x prefix or decimal u32 (get_batch_size in the reference); the
    range is checked by the builder, which knows the version, type and chunk size."""
    try:
        value = int(text[2:], 16) if text[:2].lower() == "0x" else int(text, 10)
    except ValueError:
        raise InvalidArgumentError(f"invalid batch size {text}") from None
    if not 0 <= value < 1 << 32:
        raise InvalidArgumentError(f"invalid batch size {text}")
    return value


def parse_blob_offset(text: str) -> int:
    """``--blob-offset``: a decimal u64 (get_blob_offset in the reference)."""
    if not text.isdigit() or int(text) >= 1 << 64:
        raise InvalidArgumentError(f"invalid blob offset {text}")
    return int(text)


def check_options(args) -> None:
    """The refusals nydus-image makes before building, in its words."""
    if args.bootstrap and args.blob_inline_meta:
        raise checks.conflict("--bootstrap <bootstrap>", "--blob-inline-meta")
    if args.blob_id is not None and args.blob_inline_meta:
        raise checks.conflict("--blob-inline-meta", "--blob-id <blob-id>")
    if args.blob_cache_dir is not None:
        for dest, label in (("blob_inline_meta", "--blob-inline-meta"), ("blob", "--blob <blob>"),
                            ("blob_dir", "--blob-dir <blob-dir>"), ("compressor", "--compressor <compressor>")):
            if getattr(args, dest):
                raise checks.conflict("--blob-cache-dir <blob-cache-dir>", label)
        if args.type == "estargz-rafs":
            raise InvalidArgumentError(f"conversion type `{args.type}` conflicts with `--blob-cache-dir`")
        checks.input_dir("--blob-cache-dir", args.blob_cache_dir)
    if not (args.bootstrap or args.blob_dir or args.blob_inline_meta):
        raise InvalidArgumentError("one of '--bootstrap', '--blob-dir' or '--blob-inline-meta' is required")
    checks.input_file("--config", args.config)
    if args.config is not None:
        from rafs.io.config import parse_config
        parse_config(args.config)           # a broken configuration fails here, as ConfigV2::from_file does


def run(args) -> int:
    import logging          # imported by the run, not at registration: ``rafs create --help`` needs none
    log = logging.getLogger("rafs.create")
    check_options(args)
    chunk_size = parse_chunk_size(args.chunk_size)
    blob_offset = parse_blob_offset(args.blob_offset)
    batch_size = parse_batch_size(args.batch_size)
    if args.blob_data_size is not None:
        log.debug("--blob-data-size only applies to --type estargztoc-ref: ignored")
    checks.input_file("--parent-bootstrap", args.parent_bootstrap)
    chunk_dict = checks.parse_chunk_dict(args.chunk_dict)
    # images go to regular files (written whole, then renamed into place) or FIFOs; a device could not
    # be written atomically, so it is refused here (the library writes into one rather than replace it)
    checks.output_file("--bootstrap", args.bootstrap)
    checks.output_file("--blob", args.blob)
    checks.output_file("--output-json", args.output_json, devices=True)
    patterns = None
    if args.prefetch_patterns is not None:
        from rafs.serve.trace import read_pattern_file
        patterns = read_pattern_file(args.prefetch_patterns)
        if args.prefetch_policy == "none":
            args.prefetch_policy = "fs"
    elif args.prefetch_policy != "none":
        progress.prompt_if_terminal(args, f"--prefetch-policy {args.prefetch_policy}")
        patterns = checks.stdin_lines(f"--prefetch-policy {args.prefetch_policy}", strip=False)
    if patterns is not None:
        relative = [p for p in patterns if not p.strip().startswith("/")]
        for pattern in relative:
            log.warning("Illegal file path %s specified, should be absolute path", pattern)
    features = (args.features,) if args.features else ()
    # in blob cache mode chunks are stored as they are, as nydus-image does there
    compressor = "none" if args.blob_cache_dir is not None else args.compressor or "zstd"
    builder = rafs.Builder(args.source, source_type=args.type, fs_version=int(args.fs_version),
                           compressor=compressor, digester=args.digester, chunk_size=chunk_size,
                           whiteout_spec=args.whiteout_spec, repeatable=args.repeatable,
                           blob_inline_meta=args.blob_inline_meta, features=features,
                           prefetch_policy=args.prefetch_policy, prefetch_patterns=patterns,
                           aligned_chunk=args.aligned_chunk, parent_bootstrap=args.parent_bootstrap,
                           blob_layout=args.blob_layout, blob_id=args.blob_id, blob_offset=blob_offset,
                           chunk_dict=chunk_dict, batch_size=batch_size, encrypt=args.encrypt)
    with progress.bar(args, "building") as report:
        result = builder.write(bootstrap=args.bootstrap, blob=args.blob, blob_dir=args.blob_dir,
                               blob_cache_dir=args.blob_cache_dir, progress=report)
    if not args.disable_check:
        validate_output(result, log)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result.output, f, indent=2)
    log.info("successfully built RAFS filesystem:")
    print(f"meta blob path: {result.bootstrap or '<none>'}", file=sys.stderr)
    print(f"data blob size: {result.blob_size or 0:#x}", file=sys.stderr)
    print(f"data blobs: {json.dumps(list(result.blob_ids))}", file=sys.stderr)      # as the reference: ["id"]
    return 0


def validate_output(result, log) -> None:
    """Read the generated metadata back and check its structure (what ``rafs check`` does without
    blobs); a bootstrap that went to a pipe cannot be read back and is not checked."""
    import os
    import stat

    from rafs.errors import BuildError, RafsError
    path = result.bootstrap or result.blob
    try:
        readable = path is not None and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        readable = False
    if not readable:
        log.debug("the generated metadata went to a pipe or device: not validated")
        return
    try:
        with rafs.open(path) as image:
            faults = list(image.check())
    except RafsError as exc:
        faults = [str(exc)]
    if faults:
        raise BuildError(f"validation of the generated RAFS metadata {path} failed ({len(faults)} faults): "
                         f"{faults[0]}")
    log.debug("validated the generated RAFS metadata %s", path)
