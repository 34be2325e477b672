"""``rafs chunkdict generate`` (nydus-image chunkdict generate): a chunk dictionary from several images.

Options follow src/bin/nydus-image/main.rs; what is chosen and how is :mod:`rafs.builder.chunkdict`.
"""

from __future__ import annotations

import sys

from rafs.errors import InvalidArgumentError
from rafs.options import PREFETCH_POLICIES

from . import checks


def register(sub) -> None:
    p = sub.add_parser("chunkdict", help="deduplicate RAFS filesystem metadata (chunk dictionaries)",
                       description="Chunk dictionaries, as nydus-image chunkdict does.")
    commands = p.add_subparsers(dest="chunkdict_command", metavar="COMMAND")
    g = commands.add_parser("generate", help="generate chunk dictionary based on database",
                            description="Record the chunks of several images in an SQLite database and "
                            "write a chunk dictionary bootstrap of the chunks their versions repeat; the "
                            "bootstraps must sit in directories named IMAGE:VERSION.")
    g.add_argument("sources", metavar="SOURCE", nargs="+", help="bootstrap paths (one or more)")
    g.add_argument("--database", default="sqlite:///home/runner/output/database.db",
                   help="database connection address for assisting chunk dictionary generation, e.g. "
                   "sqlite:///path/database.db")
    g.add_argument("-B", "--bootstrap", help="output path of the chunk dictionary bootstrap")
    g.add_argument("-D", "--blob-dir", help="directory to save the bootstrap in (as chunkdict.boot)")
    g.add_argument("--prefetch-policy", default="none", choices=list(PREFETCH_POLICIES),
                   help="data prefetch policy (accepted; a dictionary has nothing to prefetch)")
    g.add_argument("-J", "--output-json", help="file path to save the operation result in JSON format")
    g.add_argument("-C", "--config", help="nydusd configuration file (checked)")
    g.add_argument("-v", "--verbose", action="store_true", help="output message in verbose mode")
    g.set_defaults(func=run)
    from .main import add_global_options
    add_global_options(g, top=False)
    p.set_defaults(func=lambda args: p.error("a command is required: generate"))


def run(args) -> int:
    import json
    import logging
    import os

    import rafs
    log = logging.getLogger("rafs.chunkdict")
    for source in args.sources:
        checks.input_file("SOURCE", source)
    checks.input_file("--config", args.config)
    if args.config is not None:
        from rafs.io.config import parse_config
        parse_config(args.config)
    if args.bootstrap:
        target = args.bootstrap
    elif args.blob_dir:
        checks.input_dir("--blob-dir", args.blob_dir)
        target = os.path.join(args.blob_dir, "chunkdict.boot")
    else:
        raise InvalidArgumentError("both --bootstrap and --blob-dir are missing, please specify one to store "
                                   "the generated metadata blob file")
    checks.output_file("--bootstrap", target)
    checks.output_file("--output-json", args.output_json, devices=True)
    result = rafs.generate_chunk_dict(args.sources, args.database, target)
    log.info("The length of chunkdict is %d", result.chunk_count)
    if result.noise_images:
        log.info("It is not recommended to use image deduplication")
        for image in result.noise_images:
            log.info("%s", image)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result.output, f, indent=2)
    print(f"chunk dictionary: {result.bootstrap} ({result.chunk_count} chunks in {len(result.blob_ids)} blobs)",
          file=sys.stderr)
    return 0
