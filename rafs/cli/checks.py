"""Checks of the paths and streams a command line names, made before any work starts.

Each check raises :class:`~rafs.errors.InvalidArgumentError` naming the option and what is wrong with
its value, so a bad path reads as ``rafs create: error: --bootstrap nodir/boot: directory nodir does
not exist`` rather than as an error about a temporary file deep inside a build. URLs are left to the
code that opens them.
"""

from __future__ import annotations

import os
import stat
import sys

import rafs
from rafs.errors import InvalidArgumentError


def _is_url(path) -> bool:
    return isinstance(path, str) and "://" in path


def input_file(option: str, path) -> None:
    """``path`` (unless None or a URL) exists and is not a directory."""
    if path is None or _is_url(path):
        return
    if not os.path.exists(path):
        what = "dangling symbolic link" if os.path.islink(path) else "no such file"
        raise InvalidArgumentError(f"{option} {path}: {what}")
    if os.path.isdir(path):
        raise InvalidArgumentError(f"{option} {path}: is a directory, not a file")


def input_dir(option: str, path) -> None:
    """``path`` (unless None or a URL) is an existing directory."""
    if path is None or _is_url(path):
        return
    if not os.path.isdir(path):
        what = "not a directory" if os.path.exists(path) else "no such directory"
        raise InvalidArgumentError(f"{option} {path}: {what}")


def output_file(option: str, path, *, devices: bool = False) -> None:
    """``path`` (unless None) can be created or replaced: its directory exists and it is no directory.

    A device or socket at ``path`` is refused unless ``devices`` (the writer then writes into it rather
    than replacing it with a regular file); FIFOs are always accepted.
    """
    if path is None:
        return
    if path == "":
        raise InvalidArgumentError(f"{option}: empty path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise InvalidArgumentError(f"{option} {path}: directory {directory} {what}")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InvalidArgumentError(f"{option} {path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise InvalidArgumentError(f"{option} {path}: is a directory")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or devices):
        raise InvalidArgumentError(f"{option} {path}: not a regular file or FIFO")


def output_dir(option: str, path) -> None:
    """``path`` is a directory, or can be made as one (nothing else in its place)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidArgumentError(f"{option} {path}: not a directory")


def stdin_lines(option: str, *, strip: bool = True) -> list[str]:
    """The non-blank lines of standard input (prefetch patterns); an error if stdin is closed."""
    if sys.stdin is None:
        raise InvalidArgumentError(f"{option} reads patterns from standard input, which is closed")
    lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    return [line.strip() for line in lines] if strip else lines


def stdout_binary(option: str):
    """The binary standard output; an error if it is closed."""
    buffer = getattr(sys.stdout, "buffer", None)       # None, or main's stand-in, when it is closed
    if buffer is None:
        raise InvalidArgumentError(f"{option} -: standard output is closed")
    return buffer


def conflict(first: str, second: str) -> InvalidArgumentError:
    """The error nydus-image (clap) gives when two options exclude each other, in its words."""
    return InvalidArgumentError(f"the argument '{first}' cannot be used with '{second}'")


def exclusive(args, *options: tuple[str, str]) -> None:
    """At most one of ``options`` ((attribute, how the user wrote it) pairs) is given."""
    given = [label for dest, label in options if getattr(args, dest, None) not in (None, False)]
    if len(given) > 1:
        raise conflict(given[1], given[0])


def bootstrap_argument(args) -> str:
    """``BOOTSTRAP`` or its deprecated spelling ``-B/--bootstrap`` (one of them, not both), as
    nydus-image check, inspect and unpack take it."""
    if args.bootstrap is not None and args.bootstrap_opt is not None:
        raise conflict("--bootstrap <bootstrap>", "[BOOTSTRAP]")
    path = args.bootstrap_opt if args.bootstrap_opt is not None else args.bootstrap
    if path is None:
        raise InvalidArgumentError("the following required arguments were not provided: <BOOTSTRAP> "
                                   "(or -B/--bootstrap)")
    return path


def bootstrap_argument_given(args) -> bool:
    return args.bootstrap is not None or args.bootstrap_opt is not None


def add_bootstrap_arguments(parser, what: str = "bootstrap path or URL") -> None:
    """``BOOTSTRAP`` and the deprecated ``-B/--bootstrap``, read back with :func:`bootstrap_argument`."""
    parser.add_argument("bootstrap", metavar="BOOTSTRAP", nargs="?", help=what)
    parser.add_argument("-B", "--bootstrap", dest="bootstrap_opt", metavar="BOOTSTRAP",
                        help="[deprecated] same as BOOTSTRAP")
    add_reference_arguments(parser)


def add_reference_arguments(parser) -> None:
    """``--platform``, ``--insecure`` and ``--plain-http`` for an image given as ``docker://`` reference,
    read back with :func:`reference_options`."""
    group = parser.add_argument_group("Nydus images in a registry (docker://HOST[:PORT]/REPO:TAG or @sha256:...)")
    group.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="the manifest to open from a multi-platform "
                       "image (default: this machine's, e.g. linux/amd64)")
    group.add_argument("--insecure", action="store_true", help="do not verify the registry's TLS certificate")
    group.add_argument("--plain-http", action="store_true", help="talk to the registry over http instead of https")


def reference_options(args, source) -> dict | None:
    """The options :func:`rafs.open` takes for an image reference (``storage_options``), None for
    other sources; the flags given with anything but a reference are refused by name."""
    flags = (("--platform", "platform", args.platform), ("--insecure", "insecure", args.insecure),
             ("--plain-http", "plain_http", args.plain_http))
    if not rafs.is_reference(source):
        given = [flag for flag, _, value in flags if value]
        if given:
            raise InvalidArgumentError(f"{given[0]} applies to images in a registry (docker://...) only")
        return None
    return {key: value for _, key, value in flags if value}


def parse_chunk_dict(arg: str | None) -> str | None:
    """``--chunk-dict``: ``bootstrap=PATH`` or a bare path (builder/src/core/chunk_dict.rs
    ``parse_chunk_dict_arg``); the path is checked to be a file."""
    if arg is None:
        return None
    kind, sep, path = arg.partition("=")
    if not sep:
        path = arg
    elif kind != "bootstrap" or not path:
        raise InvalidArgumentError(f"invalid chunk dict argument {arg!r} (expected bootstrap=PATH)")
    input_file("--chunk-dict", path)
    return path


def scratch_dir(work_dir: str | None) -> str:
    """A new temporary directory (``.rafs-tmp-<pid>-*``) under ``work_dir``, else the system's
    temporary directory, for layouts pulled from or to be pushed to a registry; the caller removes it."""
    import tempfile
    from rafs import tempfiles
    directory = work_dir or tempfile.gettempdir()
    os.makedirs(directory, exist_ok=True)
    return tempfiles.mkdtemp(directory, suffix=".registry")
