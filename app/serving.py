"""How the app process serves for long: a client that goes away is one log line, and memory freed by a finished
update or a large request goes back to the system. No gradio here (the middleware is plain ASGI).

Why: under load (``python -m research.stress``) a client whose upload outlived its own timeout left a 70-line starlette
``ClientDisconnect`` traceback in the server's log, and the app's resident memory doubled: training and predicting
run in whichever of gradio's worker threads is free, glibc gives busy threads arenas of their own (up to 8 per
core), and memory freed in one arena is neither reused by the others nor returned to the system. So the arenas are
capped, free memory is returned after large work, and the heavy work runs on one compute thread (``compute``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Optional, TypeVar

from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()

M_ARENA_MAX = -8     # glibc's mallopt parameter number (malloc.h)
ARENAS = 2           # enough for a server whose heavy work is one update at a time


class QuietDisconnects:
    """ASGI middleware: a request whose client disconnected before it was read (starlette's ``ClientDisconnect``,
    e.g. an upload cut by the client's timeout) is logged as one line; there is nobody left to answer. A file that
    was deleted between gradio's check and its read (a live-gallery frame that a lagging client asks for after
    ``FrameStore`` let it go) is a 404 and one line, not a traceback."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            client = scope.get("client") or ("?", 0)
            log.warning("client %s:%s went away during %s %s; request dropped", client[0], client[1],
                        scope.get("method", ""), scope.get("path", ""))
        except FileNotFoundError:
            if started or scope.get("type") != "http":
                raise
            log.warning("%s %s: the file is gone (a frame no longer shown); 404", scope.get("method", ""),
                        scope.get("path", ""))
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"This file is no longer available."})


@functools.lru_cache(maxsize=1)   # find_library runs ldconfig: once, not after every update
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None   # glibc only


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX`` would) before the server starts its threads. Returns
    whether it applied (False off glibc)."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1)


def release_memory() -> bool:
    """Give the free memory of every arena back to the system (``malloc_trim``): after an update or a large request.
    Returns whether any was released (False off glibc)."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


class ReleaseWhenQuiet:
    """``release_memory`` once requests pause: for frequent small requests (predicts), where trimming after each
    would cost more than it frees, yet whose freed batches otherwise stay in the heap (the predict handler in
    process, on the stress's pattern: 33 MB after 100 predicts). Each call (re)starts a ``quiet_s`` timer and the trim runs when it ends; under a steady
    stream of calls it runs at once whenever ``every_s`` have passed since the last trim."""

    def __init__(self, quiet_s: float = 1.0, every_s: float = 30.0,
                 release: Optional[Callable[[], object]] = None) -> None:
        self.quiet_s, self.every_s = quiet_s, every_s
        self.release = release or release_memory
        self._timer: Optional[threading.Timer] = None
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            now_due = time.monotonic() - self._last >= self.every_s
            if not now_due:
                self._timer = threading.Timer(self.quiet_s, self._run)
                self._timer.daemon = True
                self._timer.start()
        if now_due:
            self._run()

    def _run(self) -> None:
        with self._lock:
            self._last = time.monotonic()
        self.release()


release_when_quiet = ReleaseWhenQuiet()   # the app's one


class ComputeThread:
    """One long-lived thread on which the app runs its heavy work (each iteration of an update, a predict, a scoring,
    Review's renders), one piece at a time, first come first served: a predict waits for at most one training
    iteration. Gradio runs handlers, and each step of a streaming one, in whichever of its worker threads is free;
    torch work spread over many threads at once left the heap fragmented (a probe of 4 threads training at once: RSS
    +27 MB after 8 rounds, flat on one thread), and on a device the work is serial anyway (two updates would each run
    at half speed). A call made on the thread itself runs at once (no deadlock when heavy work calls heavy work)."""

    def __init__(self, name: str = "wilss-compute") -> None:
        self._ident: Optional[int] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=self._mark)

    def _mark(self) -> None:
        self._ident = threading.get_ident()

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn(*args, **kwargs)`` on the thread; its result, or its exception raised here."""
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    def iterate(self, items: Iterator[T]) -> Iterator[T]:
        """The items of ``items`` (a generator), each one computed on the thread; the caller handles them between."""
        while True:
            item = self.call(next, items, _END)
            if item is _END:
                return
            yield item


compute = ComputeThread()   # the app's one
