"""``rafs unpack`` (nydus-image unpack): the image's tree as an OCI tar."""

from __future__ import annotations

import os
import sys
import tempfile

import rafs
from rafs.errors import InvalidArgumentError
from rafs.unpack import write_tar


def register(sub) -> None:
    p = sub.add_parser("unpack", help="write an image's tree as an OCI-compatible tar")
    p.add_argument("bootstrap", metavar="BOOTSTRAP", help="bootstrap path or URL")
    p.add_argument("-B", "--bootstrap", dest="bootstrap_opt", help="(deprecated) same as BOOTSTRAP")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-D", "--blob-dir", help="directory holding the data blobs, named by blob id")
    src.add_argument("-b", "--blob", help="the single data blob file")
    p.add_argument("--output", required=True, help="output tar path ('-' for stdout)")
    p.set_defaults(func=run)


def run(args) -> int:
    bootstrap = args.bootstrap_opt or args.bootstrap
    blobs = None
    if args.blob:
        if not os.path.exists(args.blob):
            raise InvalidArgumentError(f"--blob {args.blob}: no such file")
        blobs = [args.blob]
    with rafs.open(bootstrap, blob_dir=args.blob_dir, blobs=blobs) as image:
        if args.output == "-":
            write_tar(image, sys.stdout.buffer)
            return 0
        directory = os.path.dirname(os.path.abspath(args.output))
        fd, tmp = tempfile.mkstemp(prefix=".rafs-unpack-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                count = write_tar(image, out)
            os.replace(tmp, args.output)
        except BaseException:
            os.unlink(tmp)
            raise
    print(f"unpacked {count} entries to {args.output}", file=sys.stderr)
    return 0
