"""Lazy loading against S3 on loopback: time and bytes to the first byte of one file and to a full read,
cold and cached, compared with downloading the whole blob and extracting it.

Starts a moto S3 server and the counting proxy of ``tests/s3server.py`` on 127.0.0.1, builds an image
from generated files with ``rafs.Builder``, pushes it as ``rafs build --backend-push`` does, and reads it
back with the user's guide nydusd v1 configuration (s3 backend, blobcache). Run::

    python benchmarks/storage.py [--files 64] [--file-size 1048576]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import rafs  # noqa: E402
from rafs.io.push import Pusher  # noqa: E402
from s3server import MotoServer, S3, S3Proxy  # noqa: E402


def make_source(root: str, files: int, file_size: int, seed: int = 7) -> list[str]:
    """Files of half random, half repetitive bytes (so zstd has something to do), in a few directories."""
    rng = random.Random(seed)
    names = []
    for i in range(files):
        directory = os.path.join(root, f"dir_{i % 8}")
        os.makedirs(directory, exist_ok=True)
        half = file_size // 2
        data = rng.randbytes(half) + bytes([i % 251]) * (file_size - half)
        name = os.path.join(directory, f"file_{i:04d}.bin")
        with open(name, "wb") as f:
            f.write(data)
        names.append("/" + os.path.relpath(name, root))
    return names


def measure(proxy: S3Proxy, action):
    proxy.reset()
    start = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - start
    requests = [r for r in proxy.requests if r.method in ("GET", "HEAD")]
    return elapsed, sum(r.sent for r in requests), len(requests), result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--file-size", type=int, default=1 << 20)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="rafs-bench-storage-")
    server = MotoServer(os.path.join(work, "moto.log"))
    proxy = S3Proxy(server.endpoint)
    try:
        s3 = S3(server, proxy)
        source = os.path.join(work, "origin-root-dir")
        names = make_source(source, args.files, args.file_size)
        out = os.path.join(work, "out")
        os.makedirs(out)
        result = rafs.Builder(source).write(bootstrap=os.path.join(out, "bench.meta"), blob=os.path.join(out, "blob"))
        (blob_id,) = result.blob_ids
        os.replace(os.path.join(out, "blob"), os.path.join(out, blob_id))
        Pusher("s3", s3.backend_config(via_proxy=False)).push(
            bootstrap=os.path.join(out, "bench.meta"), name="bench", blob=os.path.join(out, blob_id), blob_id=blob_id)
        boot_url = f"s3://{s3.bucket}/nydus-demo/meta/bench"
        blob_size = os.path.getsize(os.path.join(out, blob_id))
        target = names[len(names) // 2]
        cache = os.path.join(work, "cache")
        config = s3.nydusd_config(cache)
        rows = []

        def lazy(label, image_action):
            def action():
                with rafs.open(boot_url, config=config) as image:
                    return image_action(image)
            rows.append((label,) + measure(proxy, action)[:3])

        lazy("rafs lazy, cold: open + first byte of one file", lambda im: im.open(target).read(1))
        shutil.rmtree(cache)
        lazy("rafs lazy, cold: open + whole file", lambda im: im.read(target))
        shutil.rmtree(cache)
        lazy("rafs lazy, cold: open + every file", lambda im: sum(len(im.read(n)) for n in names))
        lazy("rafs cached: open + first byte of one file", lambda im: im.open(target).read(1))
        lazy("rafs cached: open + every file", lambda im: sum(len(im.read(n)) for n in names))
        shutil.rmtree(cache)
        lazy("rafs prefetch all (8 threads), cold", lambda im: im.prefetch(all=True, threads=8).fetched)
        shutil.rmtree(cache)
        # the target: a cold full read with prefetch on, within 1.5x of download + extract
        lazy("rafs prefetch all, cold, then every file read",
             lambda im: (im.prefetch(all=True, threads=8), sum(len(im.read(n)) for n in names))[1])

        def download_and_extract():
            local = os.path.join(work, "download")
            shutil.rmtree(local, ignore_errors=True)
            os.makedirs(local)
            fs = s3.filesystem(proxy.endpoint)
            fs.get_file(f"{s3.bucket}/nydus-demo/meta/bench", os.path.join(local, "bench.meta"))
            fs.get_file(f"{s3.bucket}/nydus-demo/blob/{blob_id}", os.path.join(local, blob_id))
            with rafs.open(os.path.join(local, "bench.meta"), blob_dir=local) as image:
                image.extractall(os.path.join(local, "rootfs"))
            with open(os.path.join(local, "rootfs", target.lstrip("/")), "rb") as f:
                return f.read(1)

        rows.append(("download whole blob + extract, then first byte",) + measure(proxy, download_and_extract)[:3])
        fs = s3.filesystem(proxy.endpoint)
        one_byte = lambda: fs.cat_file(f"{s3.bucket}/nydus-demo/blob/{blob_id}", start=0, end=1)  # noqa: E731
        one_byte()                                   # client set-up out of the way
        rows.append(("(one ranged GET of 1 byte of the blob, warm client)",) + measure(proxy, one_byte)[:3])

        print(f"image: {args.files} files x {args.file_size} B, v6 zstd, blob {blob_size} B, "
              f"bootstrap {os.path.getsize(os.path.join(out, 'bench.meta'))} B; S3 = moto on 127.0.0.1")
        print(f"{'case':<52} {'seconds':>8} {'bytes':>12} {'requests':>9}")
        for label, seconds, sent, count in rows:
            print(f"{label:<52} {seconds:>8.3f} {sent:>12} {count:>9}")
    finally:
        proxy.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
