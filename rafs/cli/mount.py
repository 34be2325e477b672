"""``rafs mount`` (nydusd's FUSE mode, same flags) and ``rafs umount``.

``rafs mount --config CFG --mountpoint MNT --bootstrap BOOT`` stays in the foreground like nydusd and
returns once the mount is gone (``rafs umount MNT``, ``umount``, ``fusermount3 -u``, SIGINT or
SIGTERM, ``PUT /api/v1/daemon/exit``). With ``--apisock`` it serves nydusd's HTTP API
(:mod:`rafs.serve.api`); with ``--access-pattern-file`` it traces the files read and writes the trace
when the mount ends (:mod:`rafs.serve.trace`). A configuration with ``fs_prefetch`` enabled (and a
blob cache) prefetches the bootstrap's prefetch table in the background, as nydusd does.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

import rafs
from rafs.errors import InvalidArgumentError, RafsError
from rafs.options import FS_DRIVERS
from rafs.text import printable

from . import checks, flags, progress

log = logging.getLogger("rafs.mount")

MAX_PREFETCH_LIST = 64 << 20     # bytes of --prefetch-files read: far more paths than any image holds


def register(sub) -> None:
    p = sub.add_parser("mount", help="serve an image at a mountpoint through FUSE (nydusd's flags)",
                       description="Mount a RAFS image read-only through FUSE and serve it in the "
                       "foreground until it is unmounted or the process gets SIGINT/SIGTERM.")
    p.add_argument("-B", "--bootstrap", required=True, help="bootstrap (metadata) path or URL, or a Nydus image "
                   "in a registry (docker://HOST/REPO:TAG)")
    p.add_argument("-M", "--mountpoint", required=True, help="directory to mount the image on")
    p.add_argument("-C", "--config", help="nydusd configuration file (v1 JSON or v2 TOML/JSON): backend, "
                   "blob cache, enable_xattr, digest_validate")
    p.add_argument("-D", "--localfs-dir", help="directory holding the data blobs, named by blob id "
                   "(nydusd's shortcut for a localfs backend without a configuration)")
    p.add_argument("--threads", "--fuse-threads", "--thread-num", "-T", dest="threads", type=_threads,
                   default=4, help="worker threads for data fetched from a remote backend (default 4)")
    # the guide lists these two beside nydusd's flags; nydusd itself reads them from the configuration
    p.add_argument("--digest-validate", type=_boolean, nargs="?", const=True, default=False, metavar="BOOL",
                   help="check every chunk read against its digest (the configuration's digest_validate; "
                   "given alone it means true)")
    p.add_argument("--iostats-files", type=_boolean, nargs="?", const=True, default=False, metavar="BOOL",
                   help="keep per-file read counters, served by the API's /api/v1/metrics/files (the "
                   "configuration's iostats_files; given alone it means true)")
    p.add_argument("--prefetch-files", metavar="FILE", help="a file listing image paths to prefetch into the "
                   "blob cache once mounted, one a line (nydusd's flag; it replaces the bootstrap's prefetch "
                   "table; paths missing from the image are skipped with a warning)")
    p.add_argument("--fs-driver", choices=list(FS_DRIVERS), default="fuse",
                   help="fuse (default): serve through FUSE; erofs: the kernel mounts the bootstrap as "
                   "EROFS and rafs fills each blob's cache file on demand (fanotify, Linux 6.14+, RAFS v6)")
    p.add_argument("--fscache", metavar="DIR", help="with --fs-driver erofs: the cache directory for blob "
                   "data (default: the config's cache work_dir)")
    p.add_argument("-A", "--apisock", metavar="PATH", help="serve nydusd's HTTP API on this unix socket: "
                   "GET /api/v1/daemon, /api/v1/metrics[/files|/pattern|/backend|/blobcache|/inflight], "
                   "PUT /api/v1/daemon/exit, POST and DELETE /api/v1/mount?mountpoint=DIR (more images, "
                   "each on its own mountpoint)")
    p.add_argument("--access-pattern-file", metavar="FILE", help="trace which files are read, in the order "
                   "of their first read, and write them to FILE when the mount ends: absolute paths one a "
                   "line (what rafs create --prefetch-patterns reads), or nydusd's access records with "
                   "times when FILE ends in .json")
    checks.add_reference_arguments(p)
    p.set_defaults(func=run_mount)

    u = sub.add_parser("umount", help="unmount a rafs (or any FUSE) mount",
                       description="Unmount MOUNTPOINT with fusermount3 -u (or umount); the serving "
                       "rafs mount process then exits.")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("-z", "--lazy", action="store_true", help="detach now, finish when no longer busy")
    u.set_defaults(func=run_umount)


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError("must be between 1 and 1024")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _fuse():
    from rafs import fuse
    return fuse


def run_mount(args) -> int:
    fuse = _fuse()
    if args.config and args.localfs_dir:
        raise InvalidArgumentError("--config and --localfs-dir exclude each other")
    if args.localfs_dir and not os.path.isdir(args.localfs_dir):
        raise InvalidArgumentError(f"--localfs-dir {args.localfs_dir}: not a directory")
    # a stale mount would make the checks below fail with "Transport endpoint is not connected"
    fuse.clear_stale_mount(args.mountpoint)
    if not os.path.isdir(args.mountpoint):
        raise InvalidArgumentError(f"--mountpoint {args.mountpoint}: not a directory")
    if args.iostats_files and not args.apisock:
        log.info("--iostats-files without --apisock: no per-file I/O statistics are kept (the API serves them)")
    if args.fs_driver == "erofs":
        if args.apisock or args.access_pattern_file:
            raise InvalidArgumentError("--apisock and --access-pattern-file need --fs-driver fuse: with erofs "
                                       "the kernel reads files without asking rafs")
        return _run_erofs(args)
    if args.access_pattern_file:
        checks.output_file("--access-pattern-file", args.access_pattern_file)
    with rafs.open(args.bootstrap, config=args.config, blob_dir=args.localfs_dir, validate=args.digest_validate,
                   storage_options=checks.reference_options(args, args.bootstrap)) as image:
        settings = getattr(image.locator, "config", None)
        enable_xattr = bool(getattr(settings, "enable_xattr", False))
        _prepare_cache(settings)
        _check_blob_sources(image, args)
        log.info("mounting %s (RAFS v%d, %d blobs) at %s, xattrs %s, digest validation %s", image.name,
                 image.version, len(image.blobs), args.mountpoint, "on" if enable_xattr else "off",
                 "on" if image.validate else "off")
        prefetch_paths = _prefetch_list(image, args.prefetch_files)
        prefetching = getattr(settings, "cached", False) and (
            prefetch_paths is not None or getattr(getattr(settings, "prefetch", None), "enable", False))
        prefetches = []
        with observing(image, settings, args) as (daemon, state), \
                progress.bar(args, "prefetching", show=bool(prefetching)) as report:
            def ready():
                log.info("ready: %s answers", args.mountpoint)
                if daemon is not None:
                    daemon.state = "RUNNING"
                try:
                    prefetches.append(_start_prefetch(image, settings, state, prefetch_paths, progress=report))
                except RafsError as exc:          # the mount serves on; only the warm-up is lost
                    log.warning("prefetch not started: %s", exc)

            try:
                fuse.mount(image, args.mountpoint, threads=args.threads, enable_xattr=enable_xattr, ready=ready,
                           observer=state.observer if state is not None else None)
            finally:
                for handle in filter(None, prefetches):
                    handle.cancel()
                    handle.wait(10)
    log.info("%s unmounted", args.mountpoint)
    return 0


@contextlib.contextmanager
def observing(image, settings, args):
    """(rafs.serve.api.Daemon, the mount's MountState in it), with the daemon's API server, when
    --apisock, --access-pattern-file or the config's access_pattern ask for them (else (None, None)); on
    the way out the images mounted through the API are unmounted and the trace is written."""
    trace = bool(args.access_pattern_file or getattr(settings, "access_pattern", False))
    if not (args.apisock or trace):
        yield None, None
        return
    from rafs.serve.api import ApiServer, Daemon, MountState
    from rafs.serve.trace import MountObserver, write_pattern_file
    daemon = Daemon(mounter=_api_mounter(args))
    files = bool(args.iostats_files or getattr(settings, "iostats_files", False))
    state = daemon.add(MountState(image, MountObserver(trace=trace, files=files), config=settings,
                                  to_fuse=_fuse().InodeNumbers(image.root_ino).to_fuse))
    server = None
    if args.apisock:
        with flags.naming(path="--apisock"):
            server = ApiServer(args.apisock, daemon)
    try:
        yield daemon, state
    finally:
        daemon.state = "STOPPED"
        if server is not None:
            server.close()
        daemon.stop_all()
        if args.access_pattern_file:
            records = state.patterns()
            write_pattern_file(args.access_pattern_file, records)
            log.info("access trace: %d files read, written to %s", len(records), args.access_pattern_file)


def _api_mounter(args):
    """What serves an image for ``POST /api/v1/mount``: its own FUSE mount, served by a thread."""
    import threading

    from rafs.errors import RafsError
    from rafs.serve.api import MountState
    from rafs.serve.trace import MountObserver

    def mount_more(mountpoint, source, config, prefetch_files):
        fuse = _fuse()
        image = rafs.open(source, config=config, validate=args.digest_validate)
        try:
            settings = getattr(image.locator, "config", None)
            _prepare_cache(settings)
            _check_blob_sources(image, argparse.Namespace(threads=args.threads, config=config, localfs_dir=None))
            state = MountState(image, MountObserver(trace=bool(getattr(settings, "access_pattern", False)),
                                                    files=bool(getattr(settings, "iostats_files", False))),
                               config=settings, key=mountpoint, to_fuse=fuse.InodeNumbers(image.root_ino).to_fuse)
        except BaseException:
            image.close()
            raise
        answered, failures = threading.Event(), []

        def serve():
            try:
                fuse.mount(image, mountpoint, threads=args.threads, ready=answered.set, handle_signals=False,
                           enable_xattr=bool(getattr(settings, "enable_xattr", False)), observer=state.observer)
            except BaseException as exc:  # noqa: BLE001 - reported to the API caller
                failures.append(exc)
            finally:
                answered.set()
                if state.prefetch is not None:
                    state.prefetch.cancel()
                    state.prefetch.wait(10)
                image.close()
                log.info("%s unmounted", mountpoint)

        thread = threading.Thread(target=serve, name=f"rafs-mount {mountpoint}", daemon=True)
        thread.start()
        answered.wait(60)
        if failures or not thread.is_alive():
            raise failures[0] if failures and isinstance(failures[0], RafsError) else \
                RafsError(f"cannot mount {mountpoint}: {failures[0] if failures else 'the mount did not answer'}")

        def stop():
            fuse.unmount(mountpoint)
            thread.join(30)
        state.stop = stop
        if prefetch_files:
            import time
            try:
                state.prefetch, state.prefetch_started = image.prefetch(prefetch_files, wait=False), time.time()
            except RafsError as exc:
                log.warning("%s: prefetch_files: %s", mountpoint, exc)
        else:
            _start_prefetch(image, settings, state)
        log.info("ready: %s answers (%s, mounted through the API)", mountpoint, source)
        return state
    return mount_more


def _prepare_cache(settings) -> None:
    """Make the cache work_dir now, as nydusd does at start-up, not at the first read (which could
    only fail with EIO)."""
    if getattr(settings, "cached", False):
        try:
            os.makedirs(settings.work_dir, exist_ok=True)
        except OSError as exc:
            raise InvalidArgumentError(f"cache work_dir {settings.work_dir}: {exc.strerror}") from None


def _start_prefetch(image, settings, state, paths: list[bytes] | None = None, progress=None):
    """:func:`start_prefetch`, its handle recorded in the API's MountState (for /metrics/blobcache)."""
    handle = start_prefetch(image, settings, paths, progress=progress)
    if handle is not None and state is not None:
        import time
        state.prefetch, state.prefetch_started = handle, time.time()
    return handle


def _prefetch_list(image, list_file) -> list[bytes] | None:
    """The image paths named in ``--prefetch-files`` (one a line, blank lines ignored), those the image
    lacks left out with a warning; None without the flag."""
    if not list_file:
        return None
    try:
        with open(list_file, "rb") as f:
            raw = f.read(MAX_PREFETCH_LIST)
    except OSError as exc:
        raise InvalidArgumentError(f"--prefetch-files {list_file}: {exc.strerror}") from None
    paths, missing = [], []
    for line in raw.splitlines():
        path = line.strip()
        if not path:
            continue
        try:
            image.stat(path)
        except RafsError:
            missing.append(path)
            continue
        paths.append(path)
    if missing:
        log.warning("--prefetch-files: %d paths are not in the image and are skipped: %s", len(missing),
                    ", ".join(printable(os.fsdecode(p)) for p in missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return paths


def start_prefetch(image, settings, paths: list[bytes] | None, *, progress=None):
    """Start the background prefetch the configuration (``fs_prefetch`` / ``prefetch``) or
    ``--prefetch-files`` asks for; returns its handle, or None when there is none to run.
    ``progress(done, total)`` (:mod:`rafs.progress`) gets the bytes fetched.

    Foreground reads never wait for it: it runs in its own threads, and a chunk a reader wants that
    the prefetch is fetching at that moment is shared, not fetched twice.
    """
    prefetch = getattr(settings, "prefetch", None)
    if paths is None and not (prefetch is not None and prefetch.enable):
        return None
    if not getattr(settings, "cached", False):
        log.info("prefetch: no blob cache is configured, so there is nowhere to keep prefetched data")
        return None
    if paths is not None and not paths:
        return None
    handle = image.prefetch(paths, all=bool(prefetch and prefetch.prefetch_all), wait=False, progress=progress)
    log.info("prefetch started: %s", f"{len(paths)} paths from --prefetch-files" if paths is not None
             else "the whole image" if prefetch.prefetch_all else "the bootstrap's prefetch table")
    return handle


def _check_blob_sources(image, args) -> None:
    """Refuse to serve an image whose blobs are nowhere: every read would fail with EIO."""
    missing = rafs.missing_blobs(image, blob_dir_words="--localfs-dir", threads=args.threads)
    if not missing:
        return
    shown = "; ".join(m.message() for m in missing[:3]) + (f"; and {len(missing) - 3} more" if len(missing) > 3
                                                            else "")
    hint = "" if args.config or args.localfs_dir else " (give --config or --localfs-dir)"
    raise InvalidArgumentError(f"{len(missing)} of {len(image.blobs)} blobs cannot be read: {shown}{hint}")


def _run_erofs(args) -> int:
    """``--fs-driver erofs``: a kernel EROFS mount with blobs filled on demand, until it is unmounted."""
    import signal
    import threading
    from rafs.serve.ondemand import OnDemandMount
    if not os.path.isdir(args.mountpoint):
        raise InvalidArgumentError(f"--mountpoint {args.mountpoint}: not a directory")
    with rafs.open(args.bootstrap, config=args.config, blob_dir=args.localfs_dir, validate=args.digest_validate,
                   storage_options=checks.reference_options(args, args.bootstrap)) as image:
        settings = getattr(image.locator, "config", None)
        _check_blob_sources(image, args)
        work_dir = args.fscache or (settings.work_dir if getattr(settings, "cached", False) else None)
        if not work_dir:
            raise InvalidArgumentError("--fs-driver erofs keeps blob data in the blob cache: give --fscache DIR, "
                                       "or a --config whose cache (type blobcache) sets work_dir")
        stop = threading.Event()
        previous = {signum: signal.signal(signum, lambda *_: stop.set())
                    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        prefetching = settings is not None and settings.prefetch.enable
        try:
            with OnDemandMount(image, args.mountpoint, work_dir=work_dir, bootstrap=args.bootstrap,
                               threads=args.threads) as mount, \
                    progress.bar(args, "prefetching", show=prefetching) as report:
                log.info("ready: %s (RAFS v6 on the kernel's EROFS, %d blobs, cache %s)", args.mountpoint,
                         len(image.blobs), work_dir)
                if prefetching:
                    mount.prefetch(wait=False, progress=report)
                while mount.is_mounted() and not stop.wait(0.5):
                    pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    log.info("%s unmounted", args.mountpoint)
    return 0


def run_umount(args) -> int:
    _fuse().unmount(args.mountpoint, lazy=args.lazy)
    return 0
