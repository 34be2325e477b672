"""``rafs merge`` (nydus-image merge): overlay per-layer bootstraps into the one an image mounts.

Options follow src/bin/nydus-image/main.rs: the output goes to ``-B`` or into ``-D`` (named by the
sha256 of its bytes); per-source lists are comma separated; prefetch patterns are read from standard
input when ``--prefetch-policy`` is not ``none``. Layers that cannot be merged exit with code 2, as
``MergeError::InconsistentFilesystem`` does.

As in nydus-image, each layer's own blob is renamed unless ``-C`` is given: to
``--original-blob-ids[i]``, else to the bootstrap's file name up to its first dot (nydusify names
the bootstraps it extracts after their blob's digest), then to ``--blob-digests[i]`` when given.
"""

from __future__ import annotations

import json
import logging
import sys

import rafs
from rafs.errors import InvalidArgumentError
from rafs.options import PREFETCH_POLICIES
from rafs.text import printable

from . import checks, progress

log = logging.getLogger("rafs.merge")


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge per-layer bootstraps into one bootstrap (overlay, OCI whiteouts)",
                       description="Merge multiple RAFS filesystems into one, as nydus-image merge does.")
    p.add_argument("sources", metavar="SOURCE", nargs="+",
                   help="bootstrap paths, lower layer first; a layer's blob takes the file name (up to the "
                   "first dot) as its id unless -C, --original-blob-ids or --blob-digests say otherwise")
    p.add_argument("-B", "--bootstrap", help="output path of the merged bootstrap")
    p.add_argument("-D", "--blob-dir", help="directory to save the merged bootstrap in, named by its sha256")
    p.add_argument("--parent-bootstrap", help="bootstrap of a parent image the sources are laid on")
    p.add_argument("--chunk-dict", help="chunk dictionary bootstrap (bootstrap=PATH or PATH) used by the layers")
    p.add_argument("--prefetch-policy", default="none", choices=list(PREFETCH_POLICIES),
                   help="data prefetch policy; patterns are read from stdin, one absolute path a line")
    p.add_argument("--blob-digests", help="RAFS blob digest list separated by comma")
    p.add_argument("--original-blob-ids", help="original blob id list separated by comma")
    p.add_argument("--blob-sizes", help="RAFS blob size list separated by comma")
    p.add_argument("--blob-toc-digests", help="RAFS blob ToC digest list separated by comma")
    p.add_argument("--blob-toc-sizes", help="RAFS blob ToC size list separated by comma")
    p.add_argument("-C", "--config", help="configuration file: the blobs are accessible, so the blob ids "
                   "recorded in the bootstraps are kept")
    p.add_argument("-J", "--output-json", help="file path to save the operation result in JSON format")
    p.set_defaults(func=run)


def run(args) -> int:
    if not (args.bootstrap or args.blob_dir):
        raise InvalidArgumentError("both --bootstrap and --blob-dir are missing, please specify one to store "
                                   "the generated metadata blob file")
    for source in args.sources:
        checks.input_file("SOURCE", source)
    checks.input_file("--parent-bootstrap", args.parent_bootstrap)
    checks.input_file("--config", args.config)
    # the merged bootstrap is written whole and renamed into place; a device could not be written
    # atomically, so it is refused here (the library writes into one rather than replace it)
    checks.output_file("--bootstrap", args.bootstrap)
    checks.output_file("--output-json", args.output_json, devices=True)
    chunk_dict = checks.parse_chunk_dict(args.chunk_dict)
    patterns = None
    if args.prefetch_policy != "none":
        progress.prompt_if_terminal(args, f"--prefetch-policy {args.prefetch_policy}")
        patterns = checks.stdin_lines(f"--prefetch-policy {args.prefetch_policy}")
    merger = rafs.Merger(args.sources, parent_bootstrap=args.parent_bootstrap,
                    chunk_dict=chunk_dict, blob_digests=args.blob_digests,
                    original_blob_ids=args.original_blob_ids, blob_sizes=args.blob_sizes,
                    blob_toc_digests=args.blob_toc_digests, blob_toc_sizes=args.blob_toc_sizes,
                    prefetch_policy=args.prefetch_policy, prefetch_patterns=patterns,
                    blob_accessible=args.config is not None)
    try:
        result = merger.write(bootstrap=args.bootstrap, blob_dir=args.blob_dir)
    except rafs.InconsistentFilesystemError as exc:
        print(f"rafs merge: {printable(exc)}", file=sys.stderr)
        return 2
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result.output, f, indent=2)
    print(f"meta blob path: {result.bootstrap}", file=sys.stderr)
    print(f"data blobs: {json.dumps(list(result.blob_ids))}", file=sys.stderr)      # as the reference: ["id"]
    return 0
