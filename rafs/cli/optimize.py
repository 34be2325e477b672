"""``rafs optimize`` (nydus-image optimize): a prefetch blob holding, contiguous and in order, the chunks of
the files a workload reads first (a nydusify prefetch list, or ``rafs mount --access-pattern-file``'s trace)."""

from __future__ import annotations

import json
import sys

import rafs
from rafs.errors import InvalidArgumentError

from . import checks
from .unpack import add_backend_arguments, backend_config


def register(sub) -> None:
    p = sub.add_parser("optimize", help="build a prefetch blob from a list of files read first")
    p.add_argument("-B", "--bootstrap", required=True, help="file path of RAFS metadata")
    p.add_argument("-p", "--prefetch-files", help="the files to prefetch: nydusify's JSON "
                   "({\"version\": \"v1\", \"files\": [{\"path\": ..., \"ranges\": ...}]}), or an access trace "
                   "of rafs mount --access-pattern-file (one absolute path a line, or its JSON records)")
    p.add_argument("-C", "--config", help="nydusd configuration file whose backend holds the blobs")
    add_backend_arguments(p)
    p.add_argument("-D", "--blob-dir", help="directory for localfs storage backend, hosting data blobs")
    p.add_argument("-b", "--blob", help="path to the RAFS data blob file (an image with one blob)")
    p.add_argument("-O", "--output-bootstrap", help="output path of the optimized bootstrap (default "
                   "optimized_bootstrap)")
    p.add_argument("--output-blob-dir", help="directory for the prefetch blob")
    p.add_argument("-J", "--output-json", help="JSON file output path for the result")
    p.set_defaults(func=run)


def run(args) -> int:
    checks.input_file("--bootstrap", args.bootstrap)
    if args.output_blob_dir is None:
        raise InvalidArgumentError("missing parameter `output-blob-dir`")
    if args.prefetch_files is None:
        raise InvalidArgumentError("missing parameter `prefetch-files`")
    checks.input_file("--prefetch-files", args.prefetch_files)
    checks.input_dir("--output-blob-dir", args.output_blob_dir)
    checks.exclusive(args, ("config", "--config <config>"), ("blob_dir", "--blob-dir <blob-dir>"))
    checks.exclusive(args, ("blob", "--blob <blob>"), ("blob_dir", "--blob-dir <blob-dir>"))
    checks.input_file("--config", args.config)
    checks.input_dir("--blob-dir", args.blob_dir)
    config = backend_config(args)
    if config is not None and args.config:
        raise checks.conflict("--config <config>", "--backend-type <backend-type>")
    output = args.output_bootstrap or rafs.OPTIMIZED_BOOTSTRAP
    checks.output_file("--output-bootstrap", output)
    checks.output_file("--output-json", args.output_json)
    files = rafs.read_prefetch_files(args.prefetch_files)
    source_config = config or args.config
    blobs = None
    if args.blob:
        checks.input_file("--blob", args.blob)
        blobs = [args.blob]
    elif source_config is None and args.blob_dir is None:
        raise InvalidArgumentError("--blob-dir or --backend-type must be specified")
    result = rafs.optimize(args.bootstrap, files, output_blob_dir=args.output_blob_dir, output_bootstrap=output,
                      blob_dir=args.blob_dir, blobs=blobs, config=source_config)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result.output, f, indent=2)
    print(f"prefetch blob {result.blob_id} ({result.blob_size} bytes) in {args.output_blob_dir}, bootstrap "
          f"{result.bootstrap}", file=sys.stderr)
    return 0
