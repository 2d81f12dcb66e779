"""The server's memory housekeeping (explorer/services/memory.py, issue 17), each in a fresh
Python process of its own: memory freed by a thread is given back to the system by collect()
(glibc keeps it otherwise), and the housekeeping thread collects garbage by itself, every few
seconds, with nothing else running. The real server's thread: tests/test_load_smoke.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc: Linux only")


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


RSS = '''
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
'''


def test_collect_gives_back_what_a_thread_freed():
    """A script thread's way of allocating: many 2 KiB blocks (malloc, not Python's small-object
    allocator), one in 32 kept alive so that the arena cannot shrink from its top, the rest
    freed. glibc keeps the freed pages; collect() returns them."""
    res = _run(RSS + '''
import json, threading
from explorer.services import memory
kept = []
def work():
    blocks = [bytes(2048) for _ in range(60_000)]  # about 120 MiB
    kept.extend(blocks[::32])
base = rss_mib()
t = threading.Thread(target=work); t.start(); t.join()
before = rss_mib()
trimmed = memory.collect()
after = rss_mib()
print(json.dumps(dict(base=base, before=before, after=after, trimmed=trimmed)))
''')
    freed_mib = 60_000 * 2048 * (31 / 32) / 2**20  # about 113 MiB
    assert res["before"] - res["base"] > 0.5 * freed_mib, res  # malloc kept what was freed
    assert res["trimmed"] is True, res
    assert res["before"] - res["after"] > 0.5 * freed_mib, res  # and collect() gave it back


def test_the_housekeeping_thread_collects_garbage_by_itself():
    """Automatic collection off, a reference cycle dropped: the thread collects it within a few
    of its periods, and start() hands out the one thread however often it is called."""
    res = _run('''
import gc, json, time, weakref
from explorer.services import memory
gc.disable()
class Node: pass
a, b = Node(), Node(); a.other, b.other = b, a
alive = weakref.ref(a)
del a, b
keeper = memory.start(every_s=0.2)
same = memory.start(every_s=99) is keeper
deadline = time.monotonic() + 10
while (alive() is not None or keeper.runs < 1) and time.monotonic() < deadline:
    time.sleep(0.05)
comm = open(f"/proc/self/task/{keeper.native_id}/comm").read().strip()
print(json.dumps(dict(collected=alive() is None, runs=keeper.runs, daemon=keeper.daemon, same=same,
                      every_s=keeper.every_s, comm=comm)))
''')
    assert res["collected"] is True, res
    assert res["runs"] >= 1 and res["daemon"] is True and res["same"] is True and res["every_s"] == 0.2, res
    assert res["comm"] == "vae-memory", res


def test_limit_arenas_is_taken_by_glibc():
    res = _run('''
import json
from explorer.services import memory
print(json.dumps(dict(ok=memory.limit_arenas(2))))
''')
    assert res["ok"] is True
