"""``rafs unpack`` (nydus-image unpack): the image's tree as an OCI tar."""

from __future__ import annotations

import sys

import rafs
from rafs.build.builder import Output
from rafs.errors import InvalidArgumentError
from rafs.unpack import write_tar

from . import checks


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
        checks.input_file("--blob", args.blob)
        blobs = [args.blob]
    checks.input_dir("--blob-dir", args.blob_dir)
    if args.output != "-":
        checks.output_file("--output", args.output, devices=True)
    with rafs.open(bootstrap, blob_dir=args.blob_dir, blobs=blobs) as image:
        if args.output == "-":
            write_tar(image, checks.stdout_binary("--output"))
            return 0
        # written whole then renamed into place; a FIFO or a device (/dev/null) is written into, as the
        # reference does, never replaced
        out = Output(args.output, None, error=InvalidArgumentError)
        try:
            count = write_tar(image, _Named(out.fp, args.output))
            out.commit(None)
        except BaseException:
            out.discard()
            raise
    print(f"unpacked {count} entries to {args.output}", file=sys.stderr)
    return 0


class _Named:
    """A file whose write errors name ``path`` (a full disk reads ``No space left on device: 'x.tar'``)."""

    def __init__(self, fileobj, path):
        self.fileobj = fileobj
        self.path = path

    def write(self, data) -> int:
        try:
            return self.fileobj.write(data)
        except OSError as exc:
            if exc.filename is None:
                exc.filename = self.path
            raise
