"""``rafs build`` (nydusify build): build an image from a directory, optionally push it to S3.

As nydusify (contrib/nydusify/pkg/packer): the bootstrap goes to ``<output-dir>/<name>.meta``, the data
blob to ``<output-dir>/<name>.blob`` and ``output.json`` is nydus-image's ``--output-json``, so the
users' guide's ``mv image-store/<name>.blob image-store/$(jq -r '.blobs[0]' image-store/output.json)``
works as written. With ``--backend-push`` the blob is first renamed to its blob id ("rename blob file
into sha256 csum"), then uploaded as ``blob_prefix + blob id`` and the bootstrap as
``meta_prefix + name``, and both URLs are printed.
"""

from __future__ import annotations

import json
import os
import sys

import rafs
from rafs.errors import InvalidArgumentError
from rafs.options import COMPRESSORS, FS_VERSIONS, PUSH_BACKEND_TYPES

from . import checks, progress
from .create import parse_chunk_size

DEFAULT_OUTPUT_DIR = "./.nydus-build-output"


def register(sub) -> None:
    p = sub.add_parser("build", aliases=["pack"], help="build an image from a directory (nydusify build), "
                       "optionally pushing it to an object storage backend",
                       description="Build a RAFS image from a source directory as nydusify build does.")
    p.add_argument("--name", required=True, help="image name: the bootstrap is <output-dir>/<name>.meta")
    p.add_argument("--source-dir", required=True, help="source directory to build the image from")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR,
                   help=f"directory for the bootstrap, blob and output.json (default {DEFAULT_OUTPUT_DIR})")
    p.add_argument("--fs-version", default="6", choices=[str(v) for v in FS_VERSIONS],
                   help="RAFS format version (default 6)")
    p.add_argument("--compressor", default="zstd", choices=list(COMPRESSORS),
                   help="algorithm to compress data chunks (default zstd)")
    p.add_argument("--chunk-size", default="0x100000",
                   help="size of data chunks, a power of two in 0x1000..0x1000000 (default 0x100000)")
    p.add_argument("--backend-push", action="store_true", help="push the bootstrap and blob to the backend")
    p.add_argument("--backend-type", default="s3", choices=list(PUSH_BACKEND_TYPES),
                   help="backend type for --backend-push (s3; nydusify's oss is not supported)")
    p.add_argument("--backend-config", help="backend configuration as inline JSON")
    p.add_argument("--backend-config-file", help="backend configuration file (nydusify's keys: endpoint, "
                   "scheme, access_key_id, access_key_secret, bucket_name, region, meta_prefix, blob_prefix)")
    p.set_defaults(func=run)


def run(args) -> int:
    if not os.path.isdir(args.source_dir):
        raise InvalidArgumentError(f"--source-dir {args.source_dir}: not a directory")
    if "/" in args.name or not args.name:
        raise InvalidArgumentError(f"--name {args.name!r} cannot name a file")
    checks.output_dir("--output-dir", args.output_dir)
    pusher = None
    if not args.backend_push and (args.backend_config or args.backend_config_file):
        import logging
        logging.getLogger("rafs.builder").warning("--backend-config is used only with --backend-push: ignored")
    if args.backend_push:
        # check the backend configuration before spending time on the build
        config = rafs.load_backend_config(config=args.backend_config, config_file=args.backend_config_file)
        pusher = rafs.Pusher(args.backend_type, config)
    os.makedirs(args.output_dir, exist_ok=True)
    bootstrap = os.path.join(args.output_dir, f"{args.name}.meta")
    blob = os.path.join(args.output_dir, f"{args.name}.blob")
    builder = rafs.Builder(args.source_dir, fs_version=int(args.fs_version), compressor=args.compressor,
                           chunk_size=parse_chunk_size(args.chunk_size), whiteout_spec="oci")
    with progress.bar(args, "building") as report:
        result = builder.write(bootstrap=bootstrap, blob=blob, progress=report)
    blob_id = result.blob_ids[-1] if result.blob_ids else None
    blob_path = None
    if blob_id is not None and os.path.exists(blob):
        blob_path = blob
        if pusher is not None:
            blob_path = os.path.join(args.output_dir, blob_id)
            os.replace(blob, blob_path)               # "rename blob file into sha256 csum"
    elif os.path.exists(blob):
        os.unlink(blob)                               # nothing to store: no file data
    with open(os.path.join(args.output_dir, "output.json"), "w", encoding="utf-8") as f:
        json.dump(result.output, f, indent=2)
    print(f"bootstrap: {bootstrap}")
    if blob_path:
        print(f"blob: {blob_path}")
    if pusher is None:
        return 0
    with progress.bar(args, "pushing") as report:
        pushed = pusher.push(bootstrap=bootstrap, name=args.name, blob=blob_path, blob_id=blob_id, progress=report)
    if pushed.blob_url:
        print(f"pushed blob: {pushed.blob_url}")
    print(f"pushed bootstrap: {pushed.bootstrap_url}")
    print(f"successfully built Nydus image (bootstrap:'{pushed.bootstrap_http_url}', "
          f"blob:'{pushed.blob_http_url or ''}')", file=sys.stderr)
    return 0
