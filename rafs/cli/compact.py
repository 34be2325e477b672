"""``rafs compact`` (nydus-image compact): rewrite an image's data blobs without the chunks no file uses,
small blobs merged, and write a bootstrap pointing at them."""

from __future__ import annotations

import json
import sys

import rafs
from rafs.errors import InvalidArgumentError

from . import checks
from .unpack import add_backend_arguments, backend_config


def _count(option: str, upper: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise InvalidArgumentError(f"{option} {text}: not a number") from None
        if value < 0 or (upper is not None and value > upper):
            raise InvalidArgumentError(f"{option} {text}: must be within 0-{upper}" if upper is not None
                                       else f"{option} {text}: must not be negative")
        return value
    return parse


def register(sub) -> None:
    p = sub.add_parser("compact", help="(experimental) compact an image: remove unused chunks from its blobs, "
                       "merge small blobs")
    p.add_argument("-B", "--bootstrap", required=True, help="bootstrap to compact")
    p.add_argument("-D", "--blob-dir", required=True,
                   help="directory of the blobs (read from there unless -C or --backend-type names a "
                   "backend) and of the output blobs")
    p.add_argument("-C", "--config", help="nydusd configuration file whose backend holds the blobs")
    add_backend_arguments(p)
    p.add_argument("--min-used-ratio", help="lower bound of used ratio for blobs to be kept, possible values: "
                   "0-99, 0 means disable (default 0)")
    p.add_argument("--compact-blob-size", help="upper bound of blob size for blobs to be compacted, in bytes "
                   "(default 10485760)")
    p.add_argument("--max-compact-size", help="upper bound of compacted blob size, in bytes (default 104857600)")
    p.add_argument("--layers-to-compact", help="if number of blobs >= layers_to_compact, do compact; 0 means "
                   "always compact (default 0)")
    p.add_argument("--chunk-dict", help="chunk dictionary bootstrap (bootstrap=PATH or PATH): its chunks are "
                   "referenced, its blobs kept")
    p.add_argument("-O", "--output-bootstrap", help="bootstrap to output, default is the source bootstrap with "
                   "the suffix .bootstrap.compact")
    p.add_argument("-J", "--output-json", help="JSON file output path for the result")
    p.set_defaults(func=run)


def run(args) -> int:
    checks.input_file("--bootstrap", args.bootstrap)
    checks.input_dir("--blob-dir", args.blob_dir)
    checks.input_file("--config", args.config)
    config = backend_config(args)
    if config is not None and args.config:
        raise checks.conflict("--config <config>", "--backend-type <backend-type>")
    chunk_dict = checks.parse_chunk_dict(args.chunk_dict)
    output = args.output_bootstrap or rafs.compact_output(args.bootstrap)
    checks.output_file("--output-bootstrap", output)
    checks.output_file("--output-json", args.output_json)
    values = {}
    for option, name, upper in (("--min-used-ratio", "min_used_ratio", 99),
                                ("--compact-blob-size", "compact_blob_size", None),
                                ("--max-compact-size", "max_compact_size", None),
                                ("--layers-to-compact", "layers_to_compact", None)):
        text = getattr(args, name)
        if text is not None:
            values[name] = _count(option, upper)(text)
    result = rafs.compact(args.bootstrap, blob_dir=args.blob_dir, output_bootstrap=output,
                     config=config or args.config, chunk_dict=chunk_dict, settings=rafs.CompactConfig(**values))
    if result is None:
        print("no chance to compact data blobs", file=sys.stderr)
        return 0
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result.output, f, indent=2)
    print(f"compacted {args.bootstrap} into {result.bootstrap}: {len(result.blob_ids)} blobs", file=sys.stderr)
    return 0
