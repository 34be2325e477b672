"""``rafs inspect`` and ``rafs check`` (nydus-image inspect / check)."""

from __future__ import annotations

import json
import sys

import rafs
from rafs.text import printable

from . import checks, inspect_requests, progress


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show superblock, flags, blobs and counts of a bootstrap")
    checks.add_bootstrap_arguments(p, "bootstrap path or URL (or a blob with inline meta)")
    p.add_argument("-D", "--blob-dir", help="directory of the data blobs (nydus-image's localfs "
                   "directory; inspect reads metadata only, so only checked to exist)")
    p.add_argument("-C", "--config", help="nydusd configuration file for the blobs (checked; inspect "
                   "reads metadata only)")
    p.add_argument("-R", "--request", metavar="REQUEST",
                   help="answer one request as nydus-image inspect -R, printing its JSON value: stats, blobs, "
                   "prefetch, ls, cd DIR, stat FILE_NAME, chunk OFFSET, icheck INODE (the last four print text "
                   "first), or all (rafs's summary)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON for machines")
    p.set_defaults(func=run_inspect)

    c = sub.add_parser("check", help="validate every structure and digest of an image")
    checks.add_bootstrap_arguments(c)
    c.add_argument("-D", "--blob-dir", help="directory of data blobs: also read and verify every chunk")
    c.add_argument("-C", "--config", help="nydusd configuration file whose backend holds the data blobs: "
                   "also read and verify every chunk")
    c.add_argument("-J", "--output-json", help="write the result as JSON to this file")
    c.add_argument("-v", "--verbose", action="store_true", help="list every inode checked")
    c.add_argument("--target", help="as nydusify check: the converted Nydus image to check whole (manifest, "
                   "blobs, bootstrap, every chunk), an OCI layout or docker://HOST/REPO:TAG")
    c.add_argument("--source", help="with --target: the OCI image it was converted from (layout or reference); "
                   "the Nydus filesystem must equal its layers applied in order")
    c.set_defaults(func=run_check)


def run_inspect(args) -> int:
    bootstrap = checks.bootstrap_argument(args)
    checks.exclusive(args, ("config", "--config <config>"), ("blob_dir", "--blob-dir <blob-dir>"))
    checks.input_dir("--blob-dir", args.blob_dir)
    checks.input_file("--config", args.config)
    if args.request is not None:
        inspect_requests.check(args.request)
    with rafs.open(bootstrap, blob_dir=args.blob_dir, config=args.config,
                   storage_options=checks.reference_options(args, bootstrap)) as image:
        if args.request is not None:
            inspect_requests.dump(inspect_requests.execute(image, args.request, sys.stdout), sys.stdout)
            return 0
        info = image.describe()
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(info)
    return 0


def print_text(info: dict) -> None:
    print(f"RAFS v{info['version']}  bootstrap {info['bootstrap_size']} bytes")
    print(f"  flags        {info['flags']:#x} ({' | '.join(info['flag_words'])})")
    print(f"  compressor   {info['compressor']}    digester {info['digester']}    "
          f"chunk size {info['chunk_size']:#x}")
    for key in ("meta_blkaddr", "root_nid", "inos", "devices", "chunk_table_entries"):
        if key in info:
            print(f"  {key:<12} {info[key]}")
    print(f"  blobs        {len(info['blobs'])}")
    if info["blobs"]:
        print(f"    {'#':>3}  {'blob id':<64}  {'chunks':>7}  {'compressed':>11}  {'uncompressed':>12}  features")
        for b in info["blobs"]:
            print(f"    {b['index']:>3}  {printable(b['blob_id']):<64}  {b['chunk_count']:>7}  "
                  f"{b['compressed_size']:>11}  {b['uncompressed_size']:>12}  {' | '.join(b['feature_words']) or '-'}")
    if info.get("prefetch"):
        print(f"  prefetch     {info['prefetch']}")
    if "stats" in info:
        s = info["stats"]
        print("  tree         " + ", ".join(f"{k} {v}" for k, v in s.items()))


def run_check(args) -> int:
    if args.target or args.source:
        return run_check_images(args)
    bootstrap = checks.bootstrap_argument(args)
    checks.exclusive(args, ("config", "--config <config>"), ("blob_dir", "--blob-dir <blob-dir>"))
    if rafs.is_oci_layout(bootstrap):
        return run_check_layout(bootstrap)
    checks.input_dir("--blob-dir", args.blob_dir)
    checks.input_file("--config", args.config)
    checks.output_file("--output-json", args.output_json, devices=True)
    faults, checked = [], 0
    options = checks.reference_options(args, bootstrap)
    with_data = bool(args.blob_dir or args.config or options is not None)   # a registry has the blobs
    with rafs.open(bootstrap, blob_dir=args.blob_dir, config=args.config, validate=with_data,
                   storage_options=options) as image:
        with progress.bar(args, "checking", show=with_data) as report:
            for fault in image.check(verify_data=with_data, progress=report):
                faults.append(fault)
                progress.echo(f"FAULT: {printable(fault)}")
        if args.verbose:
            for path, inode in image.iter_entries("/"):
                checked += 1
                print(f"{inode.ino:>8} {inode.mode:07o} {inode.size:>12} {printable(path)}")
        details = image.blob_summaries()
        # nydus-image check's --output-json (OutputSerializer::dump_for_check), which nydusify's checker
        # and committer read ("blobs" as ids, "fs_version", "compressor"); then what rafs adds
        result = rafs.output_document([b["blob_id"] for b in details], rafs.BuildTrace(), image.version,
                                      image.compressor)
        result.update({"bootstrap": str(bootstrap), "digester": image.digester, "blob_details": details,
                       "data_verified": with_data, "faults": faults})
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, separators=(",", ":"))
    for b in details:
        print(f"blob {b['index']}: {printable(b['blob_id'])} compressor {b['compressor']} chunks {b['chunk_count']} "
              f"compressed {b['compressed_size']} uncompressed {b['uncompressed_size']}")
    if faults:
        print(f"check failed: {len(faults)} fault(s)", file=sys.stderr)
        return 1
    print("check passed" + (" (metadata and data)" if with_data else " (metadata)"))
    return 0


def run_check_images(args) -> int:
    """``--target`` (and ``--source``): layouts, or references pulled into a scratch layout first."""
    import os
    import shutil
    from rafs.errors import InvalidArgumentError
    if not args.target:
        raise InvalidArgumentError("--source needs --target (the converted image to check)")
    if checks.bootstrap_argument_given(args):
        raise InvalidArgumentError("--target and BOOTSTRAP exclude each other")
    scratch = None
    paths = {}
    try:
        for side in ("target", "source"):
            value = getattr(args, side)
            if value is not None and rafs.is_reference(value):
                scratch = scratch or checks.scratch_dir(None)
                value = rafs.pull_image(value, os.path.join(scratch, side), {"insecure": args.insecure,
                                                                             "plain_http": args.plain_http})
            paths[side] = value
        return run_check_layout(paths["target"], source=paths["source"])
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def run_check_layout(path, *, source=None) -> int:
    """``nydusify check`` of a converted layout: manifest, blobs, bootstrap, every chunk; compared with
    the ``source`` layout when given."""
    report = rafs.check_oci_image(path, source=source)
    for problem in report.problems:
        print(f"FAULT: {printable(problem)}", file=sys.stderr)
    if not report.ok:
        print(f"check failed: {len(report.problems)} fault(s)", file=sys.stderr)
        return 1
    compared = f", {report.files_compared} entries equal to the source" if source is not None else ""
    print(f"check passed: {len(report.manifests)} Nydus manifest(s), metadata and data{compared}")
    return 0
