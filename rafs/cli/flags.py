"""The ``rafs`` command's words for the library's parameters.

Library errors name the caller's parameters (:class:`rafs.errors.ParameterError`: ``blob_dir``,
``localfs_dir``); the command names its flags (``--blob-dir``, ``--localfs-dir``). A parameter's flag
is its name with dashes, unless :data:`FLAGS` says otherwise; where a library parameter has a general
name that one command gives a particular flag (an API server's ``path`` is ``--apisock``), the command
says so around the call with :func:`naming`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from rafs.errors import InvalidArgumentError, ParameterError

# parameter -> flag, where the flag is not the parameter with dashes
FLAGS: dict[str, str] = {}


def flag(parameter: str) -> str:
    """The flag of the library parameter ``parameter``."""
    return FLAGS.get(parameter) or "--" + parameter.replace("_", "-")


def message(exc: BaseException) -> str:
    """``exc``'s message, a parameter error's in flags."""
    return exc.worded(flag) if isinstance(exc, ParameterError) else str(exc)


@contextlib.contextmanager
def naming(**flags: str) -> Iterator[None]:
    """Parameter errors raised inside name each parameter ``p`` given here ``flags[p]`` (others by
    :func:`flag`), as an :class:`InvalidArgumentError` in the command's words."""
    try:
        yield
    except ParameterError as exc:
        raise InvalidArgumentError(exc.worded(lambda parameter: flags.get(parameter) or flag(parameter))) from None
