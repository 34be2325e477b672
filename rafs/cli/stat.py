"""``rafs stat`` (nydus-image stat): chunk deduplication statistics of one image, or of every image in a
directory, optionally against a target image built with them as its chunk dictionary."""

from __future__ import annotations

import logging
import os
import sys

import rafs
from rafs.errors import InvalidArgumentError, RafsError
from rafs.options import DIGESTERS
from rafs.text import printable

from . import checks

log = logging.getLogger("rafs.stat")


def register(sub) -> None:
    p = sub.add_parser("stat", help="chunk deduplication statistics of RAFS images")
    p.add_argument("-B", "--bootstrap", help="statistics of this image")
    p.add_argument("-D", "--blob-dir", help="statistics of every image in this directory (files without an "
                   "extension), and of deduplicating chunks across them")
    p.add_argument("-T", "--target", help="statistics of this image built with the others as chunk dictionary")
    p.add_argument("-C", "--config", help="nydusd configuration file for the blobs")
    p.add_argument("--digester", choices=DIGESTERS, default="blake3",
                   help="digest algorithm of the chunks deduplicated across images (default blake3)")
    p.add_argument("-J", "--output-json", help="write the statistics as JSON to this file instead")
    p.set_defaults(func=run)


def run(args) -> int:
    from rafs.stat import ImageStat, images_in
    checks.input_file("--config", args.config)
    checks.input_file("--target", args.target)
    checks.output_file("--output-json", args.output_json)
    stat = ImageStat(args.digester)
    if args.bootstrap:
        checks.input_file("--bootstrap", args.bootstrap)
        with rafs.open(args.bootstrap, config=args.config) as image:
            stat.add(image)
    elif args.blob_dir:
        checks.input_dir("--blob-dir", args.blob_dir)
        stat.dedup_enabled = True
        target = os.path.realpath(args.target) if args.target else None
        for path in images_in(args.blob_dir):
            if os.path.realpath(path) == target:
                continue
            try:
                with rafs.open(path, config=args.config) as image:
                    stat.add(image)
            except RafsError as exc:          # not every file in a blob directory is a bootstrap
                log.debug("skipping %s: %s", printable(path), exc)
    else:
        raise InvalidArgumentError("one of --bootstrap and --blob-dir must be specified")
    if args.target:
        with rafs.open(args.target, config=args.config) as image:
            stat.add(image, base=False)
    if args.output_json:
        stat.dump_json(args.output_json)
    else:
        sys.stdout.write(stat.report())
    return 0
