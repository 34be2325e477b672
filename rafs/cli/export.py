"""``rafs export --block`` (nydus-image export): a RAFS v6 image as a raw EROFS disk, optionally with dm-verity.

Flags as nydus-image's: ``-B/--bootstrap`` with ``-D/--localfs-dir`` (the blobs, and where the disk goes
by default: ``<dir>/<bootstrap name>.disk``), or ``-C/--config`` with a ``BlobCacheEntry`` JSON (its
``config_v2`` is the nydusd configuration, its ``config_v2.metadata_path`` the bootstrap) and then
``-O/--output``. ``--threads`` is accepted for compatibility (rafs streams with one).
"""

from __future__ import annotations

import argparse

import rafs
from rafs.errors import InvalidArgumentError
from rafs.options import VERITY_SPARES

from . import checks


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid thread number {text!r}") from None
    if not 1 <= value <= 32:
        raise argparse.ArgumentTypeError("must be between 1 and 32")
    return value


def register(sub) -> None:
    p = sub.add_parser("export", help="export a RAFS v6 image as a raw EROFS block disk (with dm-verity)")
    p.add_argument("--block", action="store_true", required=True,
                   help="export as a raw block disk image (the only kind of export)")
    p.add_argument("-B", "--bootstrap", help="bootstrap of the image to export (with --localfs-dir), or a Nydus "
                   "image in a registry (docker://HOST/REPO:TAG), its blobs streamed from the registry")
    p.add_argument("-C", "--config", help="BlobCacheEntry JSON file: config_v2 is the nydusd configuration of "
                   "the blobs, config_v2.metadata_path the bootstrap")
    p.add_argument("-D", "--localfs-dir", help="directory holding the data blobs, named by blob id; the disk "
                   "goes there unless --output says otherwise")
    p.add_argument("--threads", type=_threads, default=4, help="accepted for nydus-image compatibility, 1-32")
    p.add_argument("-O", "--output", help="path of the disk image")
    p.add_argument("--verity", action="store_true", help="append a dm-verity hash tree and print its root digest "
                   "with the veritysetup options that open it")
    p.add_argument("--verity-spare", choices=VERITY_SPARES, default="nydus",
                   help="fill of the tree's unused digest slots: nydus (as nydus-image, the default; the "
                   "kernel accepts it) or zero (as veritysetup format; 'veritysetup verify' accepts only this)")
    checks.add_reference_arguments(p)
    p.set_defaults(func=run)


def _blob_cache_entry(path: str) -> tuple[dict, str]:
    """(nydusd configuration, bootstrap path) of a BlobCacheEntry file."""
    from rafs.io.config import parse_text, read_config_file
    entry = parse_text(read_config_file(path, "--config"), path, formats=("json",))
    config = entry.get("config_v2") if isinstance(entry, dict) else None
    if not isinstance(config, dict):
        raise InvalidArgumentError(f"--config {path}: not a BlobCacheEntry: it has no config_v2 object")
    bootstrap = config.get("metadata_path")
    if not isinstance(bootstrap, str) or not bootstrap:
        raise InvalidArgumentError(f"--config {path}: config_v2.metadata_path (the bootstrap) is missing")
    # the entry's own key, not one of the nydusd configuration's
    return {key: value for key, value in config.items() if key != "metadata_path"}, bootstrap


def run(args) -> int:
    from rafs.export import default_output, export_block
    reference = rafs.is_reference(args.bootstrap) if args.bootstrap else False
    storage_options = checks.reference_options(args, args.bootstrap)
    if reference and (args.config or args.localfs_dir):
        raise InvalidArgumentError("--bootstrap docker://... reads the blobs from the registry: leave out "
                                   "--config and --localfs-dir")
    if reference:
        if not args.output:
            raise InvalidArgumentError("--output is required with --bootstrap docker://...")
        bootstrap, config = args.bootstrap, None
    elif args.config and args.localfs_dir:
        raise checks.conflict("--config <config>", "--localfs-dir <localfs-dir>")
    elif args.localfs_dir:
        if not args.bootstrap:
            raise InvalidArgumentError("--localfs-dir needs --bootstrap")
        checks.input_dir("--localfs-dir", args.localfs_dir)
        bootstrap, config = args.bootstrap, None
    elif args.config:
        if args.bootstrap:
            raise InvalidArgumentError("--bootstrap goes with --localfs-dir; with --config the bootstrap is "
                                       "config_v2.metadata_path")
        if not args.output:
            raise InvalidArgumentError("--output is required with --config")
        checks.input_file("--config", args.config)
        config, bootstrap = _blob_cache_entry(args.config)
    else:
        raise InvalidArgumentError("both --config and --localfs-dir are missing")
    output = args.output or default_output(bootstrap, args.localfs_dir)
    checks.output_file("--output", output)
    with rafs.open(bootstrap, blob_dir=args.localfs_dir, config=config, storage_options=storage_options) as image:
        result = export_block(image, output, verity=args.verity, spare=args.verity_spare)
    if result.root_digest is not None:
        print(f"dm-verity options: {result.veritysetup_options}")
    return 0
