"""``rafs blob-info``: what a RAFS data blob (or a nydusd ``.blob.meta`` cache file) holds."""

from __future__ import annotations

import contextlib
import json
import sys

import rafs
from rafs.text import printable


def register(sub) -> None:
    p = sub.add_parser("blob-info", help="show the sections, ToC, CI header and chunks of a data blob")
    p.add_argument("blob", metavar="BLOB", help="data blob path or URL (or a nydusd .blob.meta cache file)")
    p.add_argument("--chunks", action="store_true", help="also list every chunk record")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=run_blob_info)


def run_blob_info(args) -> int:
    with contextlib.closing(rafs.open_range_reader(args.blob)) as blob:
        info = rafs.describe_blob(blob, chunks=args.chunks)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(info)
    return 1 if info["problems"] else 0


def print_text(info: dict) -> None:
    print(f"blob {printable(info['blob_id'] or '?')}  {info['size']} bytes")
    if info["sections"]:
        print("  sections")
        for s in info["sections"]:
            print(f"    {printable(s['name']):<16} {s['offset']:>12} +{s['size']:<12} "
                  f"header at {s['header_offset']}")
    toc = info["toc"]
    if toc:
        print(f"  ToC          {len(toc['entries'])} entries at {toc['offset']}, {toc['size']} bytes, "
              f"sha256 {toc['digest']}")
        for e in toc["entries"]:
            method = printable(e["compressor"] or hex(e["flags"]))
            print(f"    {printable(e['name']):<16} {method:<9} {e['compressed_offset']:>12} "
                  f"+{e['compressed_size']:<10} -> {e['uncompressed_size']:<10} {e['uncompressed_digest']}")
    header = info["ci_header"]
    if header:
        print(f"  CI           v{info['chunk_info_version']}, {info['chunk_count']} chunks, "
              f"{header['ci_compressor']} {header['ci_compressed_size']} -> {header['ci_uncompressed_size']} "
              f"bytes at {header['ci_offset']}")
        print(f"  features     {header['features']:#x} ({' | '.join(header['feature_words']) or '-'})")
        if info["batch_contexts"] or info["zran_contexts"]:
            print(f"  contexts     {info['batch_contexts']} batch, {info['zran_contexts']} ZRAN")
    boot = info["inline_bootstrap"]
    if boot:
        print(f"  bootstrap    {boot['compressor']} {boot['compressed_size']} -> {boot['uncompressed_size']} "
              f"bytes at {boot['offset']}")
    if not (info["sections"] or toc or header or boot):
        print("  no RAFS blob metadata (ToC, chunk info or inline bootstrap): an old-style data blob, "
              "or not a RAFS blob")
    for chunk in info.get("chunks", []):
        print(f"    chunk {chunk['index']:>6}  {chunk['compressed_offset']:>12} +{chunk['compressed_size']:<9} "
              f"-> {chunk['uncompressed_offset']:>12} +{chunk['uncompressed_size']:<9} flags {chunk['flags']:#x}"
              + (f" ctx {chunk['context_index']}:{chunk['context_offset']}" if "context_index" in chunk else ""))
    for problem in info["problems"]:
        print(f"  PROBLEM: {printable(problem)}", file=sys.stderr)
