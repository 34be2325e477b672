"""``rafs unpack`` (nydus-image unpack): the image's tree as an OCI tar."""

from __future__ import annotations

import os
import stat
import sys
import tempfile

import rafs
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
        if not stat.S_ISREG(_mode(args.output)):
            # a FIFO or a device (/dev/null) is written into, as the reference does; never replaced
            with open(args.output, "wb") as out:
                count = write_tar(image, _Named(out, args.output))
        else:
            count = _write_replacing(image, args.output)
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


def _mode(path) -> int:
    """The file type of ``path``; a regular file's when nothing is there yet."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return stat.S_IFREG


def _write_replacing(image, path) -> int:
    """Write the tar beside ``path`` and rename it into place once whole."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rafs-unpack-", dir=directory)
    except OSError as exc:
        raise InvalidArgumentError(f"--output {path}: cannot create a file in {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            count = write_tar(image, _Named(out, path))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return count
