"""Run `python -m trainer ARGS` under a data-segment limit and report its peak data size.

    python tests/distributed/memlimit.py LIMIT_BYTES ARGS...      (LIMIT_BYTES 0: no limit)

RLIMIT_DATA caps the memory a process allocates (heap, anonymous mappings), not the pages
of a file mapped read-only, so it is the limit that tells "read in batches from a memory
mapped file" from "loaded whole". (RLIMIT_AS would also count the mapping itself.) The
limit is set before torch is imported, as it is for a process started under it.

Prints one JSON line last: {"rc": exit status, "peak_data_bytes": highest VmData seen}.
"""

import json
import resource
import sys
import threading
import time


def vm_data() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    limit = int(sys.argv[1])
    if limit:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    peak = [vm_data()]
    done = threading.Event()

    def sample():  # VmData every millisecond: the peak, including short-lived buffers
        while not done.is_set():
            peak[0] = max(peak[0], vm_data())
            time.sleep(0.001)

    threading.Thread(target=sample, daemon=True).start()
    from trainer.__main__ import main as trainer_main

    try:
        rc = trainer_main(sys.argv[2:])
    except MemoryError:
        print("error: MemoryError", file=sys.stderr)
        rc = 3
    done.set()
    peak[0] = max(peak[0], vm_data())
    print(json.dumps({"rc": rc, "peak_data_bytes": peak[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
