"""The ``rafs`` command: subcommands named and flagged like nydus-image, nydusd and nydusify.

Each command group lives in its own module with ``register(subparsers)``; this module only wires them
and turns rafs errors into one-line messages and exit codes (1 for a fault in the input, 2 for usage).
Only the module of the command being run is imported (start-up is most of a small command's time);
``rafs --help``, an unknown command or no command at all load every module, so the listing is whole.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import InvalidArgumentError, RafsError

# Modules providing ``register(subparsers)``; a group whose module is missing is simply absent.
COMMAND_MODULES = ("inspect", "unpack", "create", "merge", "build", "mount", "blobinfo", "convert")
# Command (and alias) -> the module registering it, so a command line imports one module.
COMMANDS = {"inspect": "inspect", "check": "inspect", "unpack": "unpack", "create": "create", "merge": "merge",
            "build": "build", "pack": "build", "mount": "mount", "umount": "mount", "blob-info": "blobinfo",
            "convert": "convert"}
_GLOBAL_OPTIONS_WITH_VALUE = ("-l", "--log-level")


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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for ``command`` (only its module imported), or for every command when None."""
    parser = argparse.ArgumentParser(prog="rafs", description="Build, inspect, check, unpack and mount "
                                     "RAFS (Nydus) images.")
    parser.add_argument("-V", "--version", action="version", version=f"rafs {__version__}")
    parser.add_argument("-l", "--log-level", default="info",
                        choices=["trace", "debug", "info", "warn", "error"], help="log level (default info)")
    parser.add_argument("--debug", action="store_const", dest="log_level", const="debug",
                        help="same as --log-level debug (nydusify's --debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"{__package__}.{name}"):
                continue
            raise
        module.register(sub)
    return parser


def setup_logging(level: str) -> None:
    import logging          # here, not at the top: ``--help`` and usage errors exit before any logging
    mapping = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
               "warn": logging.WARNING, "error": logging.ERROR}
    logging.basicConfig(level=mapping.get(level, logging.INFO), format="[%(levelname)s] %(message)s",
                        stream=sys.stderr)


def one_line(exc: BaseException) -> str:
    """An error's message on one line (backends such as botocore put line breaks in theirs), without
    any URL's userinfo (whatever raised it)."""
    from ..io.redact import redact_urls
    return redact_urls(" ".join(part.strip() for part in str(exc).splitlines() if part.strip()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(getattr(args, "log_level", "info"))
    try:
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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
