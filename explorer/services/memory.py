"""The server process's memory: what a crowd of sessions frees is given back (issue 17).

Streamlit runs every script run in a thread of its own, and glibc's malloc gives each thread
that allocates at the same time as another an arena of its own (up to 8 per core), keeping
what is freed there for later instead of returning it to the system. With 30 sessions
measured inside the server (mallinfo2): the memory malloc held but nobody used grew from
5 MiB after warm-up to 90 MiB over four minutes, all of the server's growth but the caches
filling, and none of it was returned when the sessions left.

Two things here, both once per process:
- `limit_arenas()`: at most ARENAS malloc arenas (mallopt M_ARENA_MAX), so that the script
  threads share what was freed instead of each keeping its own.
- `start()`: a daemon thread that every EVERY_S runs a full garbage collection (reference
  cycles, e.g. a dropped session's figures; Streamlit's own collection after every script run,
  runner.postScriptGC, is off in .streamlit/config.toml: it cost 30-100 ms of held GIL after
  each of hundreds of runs a minute) and then malloc_trim(0), which returns the free pages
  of every arena to the system. A thread rather than the end of a page run: when the
  sessions have left no page runs, and Streamlit drops a closed session's state
  (server.disconnectedSessionTTL) without running anything.

Measured (30 sessions, 150 s, one trained digits run, under the bench lock; RSS warm -> after
the sessions -> 130 s after they left): 357 -> 466 -> 447 MiB with the trim alone,
357 -> 394 -> 387 MiB with both; without either, 357 -> 460 (240 s) and nothing returned. What
is left is the bounded caches filling (Python blocks 1.09 -> 1.33 million, the same after
the sessions were dropped).

Neither changes a number the app shows. Where the C library is not glibc (no mallopt or
malloc_trim) both do nothing but the garbage collection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
import time

EVERY_S = 5.0  # seconds between two collections (and trims)
ARENAS = 2  # malloc arenas at most (glibc's default: 8 per core)
M_ARENA_MAX = -8  # mallopt's parameter number (glibc's malloc.h)
PR_SET_NAME = 15  # prctl's option that names the calling thread (linux/prctl.h)

_log = logging.getLogger("explorer.memory")


def _load_libc():
    """glibc, if this process runs on it (with mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")):
        return None
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


_libc = _load_libc()


def limit_arenas(n: int = ARENAS) -> bool:
    """At most n malloc arenas from now on (threads then share them); True if the C library
    took it."""
    return bool(_libc is not None and _libc.mallopt(M_ARENA_MAX, n) == 1)


def collect() -> bool:
    """A full garbage collection, then the free memory of every malloc arena given back to the
    system; True if malloc_trim returned some."""
    gc.collect()
    return bool(_libc is not None and _libc.malloc_trim(0))  # ctypes releases the GIL meanwhile


class _Housekeeper(threading.Thread):
    """collect() every `every_s` seconds, for the life of the process."""

    def __init__(self, every_s: float):
        super().__init__(name="vae-memory", daemon=True)
        self.every_s = every_s
        self.runs = 0  # collections done so far

    def run(self) -> None:
        if _libc is not None and hasattr(_libc, "prctl"):  # the thread's name in /proc/PID/task/*/comm
            _libc.prctl(PR_SET_NAME, self.name.encode()[:15], 0, 0, 0)
        while True:
            time.sleep(self.every_s)
            try:
                collect()
            except Exception:  # never let housekeeping end the process's memory care quietly
                _log.exception("memory housekeeping failed")
            self.runs += 1


_housekeeper: _Housekeeper | None = None
_start_lock = threading.Lock()


def started() -> bool:
    return _housekeeper is not None


def start(every_s: float = EVERY_S) -> _Housekeeper:
    """The housekeeping thread, started the first time (later calls return the same one)."""
    global _housekeeper
    with _start_lock:
        if _housekeeper is None:
            _housekeeper = _Housekeeper(every_s)
            _housekeeper.start()
            _log.info("memory: a garbage collection and malloc_trim every %.0f s (%s)", every_s,
                      "glibc" if _libc is not None else "no glibc: collection only")
        return _housekeeper
