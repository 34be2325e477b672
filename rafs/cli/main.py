"""The ``rafs`` command: subcommands named and flagged like nydus-image, nydusd and nydusify.

Each command group lives in its own module with ``register(subparsers)``; this module only wires them
and turns rafs errors into one-line messages and exit codes (1 for a fault in the input, 2 for usage).
Only the module of the command being run is imported (start-up is most of a small command's time);
``rafs --help``, an unknown command or no command at all load every module, so the listing is whole.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import sys

from .. import __version__
from ..errors import InvalidArgumentError, RafsError
from ..text import printable

# Modules providing ``register(subparsers)``; a group whose module is missing is simply absent.
COMMAND_MODULES = ("inspect", "unpack", "create", "merge", "build", "mount", "blobinfo", "convert", "chunkdict",
                   "export", "stat", "cache", "compact", "optimize")
# Command (and alias) -> the module registering it, so a command line imports one module.
COMMANDS = {"inspect": "inspect", "check": "inspect", "unpack": "unpack", "create": "create", "merge": "merge",
            "build": "build", "pack": "build", "mount": "mount", "umount": "mount", "blob-info": "blobinfo",
            "convert": "convert", "copy": "convert", "chunkdict": "chunkdict", "export": "export", "stat": "stat",
            "cache": "cache", "compact": "compact", "optimize": "optimize"}
_GLOBAL_OPTIONS_WITH_VALUE = ("-l", "--log-level", "-L", "--log-file")
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")
# Commands writing temporary files beside their outputs: SIGTERM, SIGHUP and SIGINT unwind them like
# Ctrl-C so those files are removed (rafs.tempfiles); mount has its own signal handling.
CLEANUP_ON_SIGNAL = ("create", "build", "pack", "merge", "convert", "copy", "unpack", "export", "compact", "optimize")


def command_of(argv: list[str]) -> str | None:
    """The command named on a command line, if the global options before it are plain; else None."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_OPTIONS_WITH_VALUE:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return arg if arg in COMMANDS else None
    return None


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, before or after its name, as nydus-image's clap arguments
    marked ``global(true)`` are (``-l/--log-level``, ``-L/--log-file``; ``--debug`` is nydusify's).

    On a command's parser they default to ``SUPPRESS``, so a value given before the command is kept
    unless the command line repeats the option after it; an option a command defines itself wins.
    """
    defaults = {"log_level": "info", "log_file": None, "quiet": False} if top else \
        {"log_level": argparse.SUPPRESS, "log_file": argparse.SUPPRESS, "quiet": argparse.SUPPRESS}
    taken = parser._option_string_actions          # options the command defines itself
    if not {"-l", "--log-level"} & taken.keys():
        parser.add_argument("-l", "--log-level", default=defaults["log_level"], choices=LOG_LEVELS,
                            help="log level (default info)")
    if not {"-L", "--log-file"} & taken.keys():
        parser.add_argument("-L", "--log-file", default=defaults["log_file"],
                            help="also write log messages to this file")
    if not {"-q", "--quiet"} & taken.keys():
        parser.add_argument("-q", "--quiet", action="store_true", default=defaults["quiet"],
                            help="no progress bars or prompts (they are shown only on a terminal)")
    if "--debug" not in taken:
        parser.add_argument("--debug", action="store_const", dest="log_level", const="debug",
                            default=defaults["log_level"], help="same as --log-level debug (nydusify's --debug)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for ``command`` (only its module imported), or for every command when None."""
    parser = argparse.ArgumentParser(prog="rafs", description="Build, inspect, check, unpack and mount "
                                     "RAFS (Nydus) images.")
    parser.add_argument("-V", "--version", action="version", version=f"rafs {__version__}")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"{__package__}.{name}"):
                continue
            raise
        module.register(sub)
    for command_parser in {id(p): p for p in sub.choices.values()}.values():     # aliases share one
        add_global_options(command_parser, top=False)
    return parser


def setup_logging(level: str, log_file: str | None = None) -> None:
    """Log to stderr at ``level`` and, with ``-L/--log-file``, to that file too (appended)."""
    # imported here, not at the top: ``--help`` and usage errors exit before any logging
    from .logs import add_file, configure
    configure(level)
    if log_file:
        try:
            add_file(log_file)
        except OSError as exc:
            raise InvalidArgumentError(f"--log-file {log_file}: {exc.strerror or exc}") from None


def one_line(exc: BaseException) -> str:
    """An error's message on one line (backends such as botocore put line breaks in theirs), without
    any URL's userinfo (whatever raised it), with the control characters an image's names and ids may
    carry escaped."""
    from .. import redact_urls
    from .flags import message
    return printable(redact_urls(" ".join(part.strip() for part in message(exc).splitlines() if part.strip())))


class _ClosedStream:
    """Stands in for a standard stream the caller closed (``>&-``): writing to it is an OSError, which
    ends the command with one line instead of an AttributeError on ``None``."""

    def __init__(self, name: str):
        self.name = name

    def write(self, text) -> int:
        raise OSError(errno.EBADF, f"standard {self.name} is closed")

    def flush(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if sys.stdout is None:
        sys.stdout = _ClosedStream("output")
    if sys.stderr is None:
        sys.stderr = _ClosedStream("error")
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    guard = contextlib.nullcontext()
    if args.command in CLEANUP_ON_SIGNAL:
        from ..tempfiles import raise_on_termination
        guard = raise_on_termination()
    try:
        setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_file", None))
        with guard:
            return int(args.func(args) or 0)
    except InvalidArgumentError as exc:
        print(f"rafs {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except RafsError as exc:
        print(f"rafs {args.command}: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except OSError as exc:              # an input or output the command was given cannot be used
        print(f"rafs {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", 2)          # a plain KeyboardInterrupt is SIGINT's
        print(f"rafs {args.command}: stopped by {str(exc) or 'SIGINT'}; temporary files removed", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    raise SystemExit(main())
