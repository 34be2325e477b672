"""``rafs unpack`` (nydus-image unpack): the image's tree as an OCI tar."""

from __future__ import annotations

import json
import sys

import rafs
from rafs.errors import InvalidArgumentError
from rafs.options import BACKEND_TYPES

from . import checks, progress


# nydus-image offers every backend but localfs for ``--backend-type``, and so does rafs
# (rafs.options.BACKEND_TYPES): a local directory is ``--blob-dir``; localfs is parsed to say so.


def register(sub) -> None:
    p = sub.add_parser("unpack", help="write an image's tree as an OCI-compatible tar")
    checks.add_bootstrap_arguments(p)
    # one blob source at most, as nydus-image's "backend" group: --blob, --blob-dir or --backend-type
    p.add_argument("-D", "--blob-dir", help="directory holding the data blobs, named by blob id")
    p.add_argument("-b", "--blob", help="the single data blob file")
    add_backend_arguments(p)
    p.add_argument("--output", required=True, help="output tar path ('-' for stdout)")
    p.set_defaults(func=run)


def add_backend_arguments(p) -> None:
    """nydus-image's ``--backend-type``, ``--backend-config`` and ``--backend-config-file``."""
    p.add_argument("--backend-type", choices=BACKEND_TYPES + ("localfs",), metavar="{" + ",".join(BACKEND_TYPES) + "}",
                   help="read the blobs through this storage backend, configured by --backend-config or "
                   "--backend-config-file (the backend section of a nydusd configuration)")
    p.add_argument("--backend-config", help="backend configuration as inline JSON, e.g. "
                   "'{\"endpoint\": ..., \"bucket_name\": ...}' for s3 or '{\"addr\": SOCKET}' for http-proxy")
    p.add_argument("--backend-config-file", help="backend configuration file (JSON)")


def backend_config(args) -> dict | None:
    """The nydusd v2 configuration ``--backend-type`` and ``--backend-config[-file]`` describe."""
    checks.exclusive(args, ("backend_config", "--backend-config <backend-config>"),
                     ("backend_config_file", "--backend-config-file <backend-config-file>"))
    if args.backend_type is None:
        if args.backend_config or args.backend_config_file:
            raise InvalidArgumentError("--backend-config needs --backend-type")
        return None
    if args.backend_type == "localfs":
        raise InvalidArgumentError("Use --blob-dir to specify localfs backend")
    from rafs.io.config import MAX_CONFIG_SIZE
    if args.backend_config_file is not None:
        checks.input_file("--backend-config-file", args.backend_config_file)
        try:
            with open(args.backend_config_file, "rb") as f:
                text = f.read(MAX_CONFIG_SIZE + 1)
        except OSError as exc:
            raise InvalidArgumentError(f"fail to read backend config file {args.backend_config_file}: "
                                       f"{exc.strerror}") from None
        where = f"--backend-config-file {args.backend_config_file}"
    elif args.backend_config is not None:
        text, where = args.backend_config.encode(), "--backend-config"
    else:
        raise InvalidArgumentError("--backend-config or --backend-config-file must be specified")
    if len(text) > MAX_CONFIG_SIZE:
        raise InvalidArgumentError(f"{where}: larger than {MAX_CONFIG_SIZE} bytes")
    try:
        section = json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(section, dict):
        raise InvalidArgumentError(f"{where}: expected a JSON object")
    return {"version": 2, "backend": {"type": args.backend_type, args.backend_type: section}}


def run(args) -> int:
    bootstrap = checks.bootstrap_argument(args)
    checks.exclusive(args, ("backend_type", "--backend-type <backend-type>"), ("blob", "--blob <blob>"),
                     ("blob_dir", "--blob-dir <blob-dir>"))
    config = backend_config(args)
    blobs = None
    if args.blob:
        checks.input_file("--blob", args.blob)
        blobs = [args.blob]
    checks.input_dir("--blob-dir", args.blob_dir)
    if args.output == "":
        raise InvalidArgumentError("invalid empty --output option")
    if args.output != "-":
        checks.output_file("--output", args.output, devices=True)
    with rafs.open(bootstrap, blob_dir=args.blob_dir, blobs=blobs, config=config,
                   storage_options=checks.reference_options(args, bootstrap)) as image:
        if args.output == "-":
            with progress.bar(args, "unpacking", unit="entries") as report:
                image.write_tar(checks.stdout_binary("--output"), progress=report)
            return 0
        with progress.bar(args, "unpacking", unit="entries") as report:
            count = image.write_tar(args.output, progress=report)
    print(f"unpacked {count} entries to {args.output}", file=sys.stderr)
    return 0

