"""Deadlines for whole HTTP requests: one daemon thread that shuts a request's socket down when its
deadline passes (:data:`WATCHDOG`).

A socket timeout bounds each read, so a server dripping a byte a second holds a request forever; a
deadline bounds the request from connecting to its last body byte, as nydusd's reqwest ``timeout``
does. Shutting the socket down ends a blocked connect, TLS handshake, header or body read at once; the
request then raises :class:`RequestTimeout`. Used by :class:`rafs.io.http.HttpClient`.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from dataclasses import dataclass


class RequestTimeout(TimeoutError):
    """A request ran past its deadline (connect to last byte)."""


@dataclass
class Watch:
    deadline: float
    sock: socket.socket | None
    fired: bool = False
    done: bool = False


class Watchdog:
    """One daemon thread that shuts down the socket of every request still running at its deadline."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._cancelled = 0                  # entries in the heap whose request has finished

    def watch(self, deadline: float, sock: socket.socket) -> Watch:
        watch = Watch(deadline, sock)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rafs-http-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        return watch

    def follow(self, watch: Watch, sock: socket.socket) -> None:
        """Watch ``sock`` from now on (a connection's socket once made, then its TLS wrapper); shut it
        down at once if the deadline has already passed."""
        with self._cond:
            if watch.done:
                return
            watch.sock = sock
            late = watch.fired
        if late:
            shutdown(sock)

    def cancel(self, watch: Watch) -> bool:
        """Stop watching; whether the deadline fired (the socket is then unusable)."""
        with self._cond:
            if not watch.done and not watch.fired:
                # the entry stays in the heap until its deadline; compacted when the dead outnumber the live
                self._cancelled += 1
                if self._cancelled > 64 and 2 * self._cancelled > len(self._heap):
                    self._heap = [entry for entry in self._heap if not entry[2].done and entry[2] is not watch]
                    heapq.heapify(self._heap)
                    self._cancelled = 0
            watch.done = True
            watch.sock = None
            return watch.fired

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, watch = self._heap[0]
                now = time.monotonic()
                if deadline > now and not watch.done:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                if watch.done:
                    self._cancelled = max(0, self._cancelled - 1)
                    continue
                watch.fired = True
                sock = watch.sock
            if sock is not None:
                shutdown(sock)


def shutdown(sock: socket.socket) -> None:
    """End every blocked read and write on ``sock``: the plain socket's shutdown, also under TLS
    (SSLSocket.shutdown would drop the TLS object under the feet of the thread still reading from it)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, AttributeError, TypeError):
        pass


WATCHDOG = Watchdog()
