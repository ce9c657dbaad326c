"""glibc allocator tuning (controller.common.malloc_tuning): real mallopt calls, observed through
glibc's own ``mallinfo2`` and the kernel's page-fault count, each in a fresh subprocess (the
setting is process-wide)."""
import json
import os
import platform
import subprocess
import sys

import pytest

from controller.common import malloc_tuning

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

PROBE = r"""
import ctypes, json, resource, sys
import torch
from controller.common.malloc_tuning import applied, keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
out = {}
if sys.argv[1] == "tuned":
    out["applied"] = keep_freed_memory()
    out["again"] = keep_freed_memory()      # idempotent
    out["settings"] = applied()
# one 20 MiB activation, written, then freed
x = torch.ones(5 * 2**20)
out["mmapped_while_alive"] = libc.mallinfo2().hblkhd
del x
out["free_in_heap_after"] = libc.mallinfo2().fordblks
# repeated "forward passes": blocks of 1-24 MiB allocated, written and freed, as activations are
sizes = [1, 3, 24, 6, 12, 2, 18, 9]  # MiB: 75 MiB = 19,200 pages per round
def chunk():
    blocks = [torch.ones(mb * 262144) for mb in sizes]
    del blocks
for _ in range(3):
    chunk()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    chunk()
out["faults_5_rounds"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps(out))
"""
MIB = 2**20


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuned_allocator_keeps_freed_memory():
    default, tuned = _probe("default"), _probe("tuned")
    # glibc's default: a fresh 20 MiB block is mmap'ed and handed back to the kernel when freed
    assert default["mmapped_while_alive"] >= 20 * MIB
    assert default["free_in_heap_after"] < 20 * MIB
    # tuned: it comes from the heap and stays there for the next chunk
    assert tuned["applied"] is True and tuned["again"] is True
    assert tuned["settings"]["mmap_threshold"] == malloc_tuning.MAX_MMAP_THRESHOLD
    assert tuned["mmapped_while_alive"] < 20 * MIB
    assert tuned["free_in_heap_after"] >= 20 * MIB
    # steady state: 5 rounds write 96,000 pages; reused memory faults (almost) none of them
    # (a one-off heap growth of a block's size can happen once)
    assert tuned["faults_5_rounds"] < 19_200, tuned


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="mmap_threshold"):
        malloc_tuning.keep_freed_memory(mmap_threshold=64 * MIB)
    with pytest.raises(ValueError, match="trim_threshold"):
        malloc_tuning.keep_freed_memory(trim_threshold=0)


def test_release_free_memory_returns_freed_heap_pages():
    """malloc_trim(0) after many small freed blocks: the resident set shrinks (glibc, Linux only)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    code = (
        "import sys; sys.path.insert(0, '.')\n"
        "from controller.common.malloc_tuning import release_free_memory\n"
        "def rss():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1])\n"
        "blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MB of heap blocks below the mmap threshold\n"
        "keep = blocks[-1]; del blocks                          # freed, but the heap top is still in use\n"
        "before = rss(); ok = release_free_memory(); after = rss()\n"
        "print(ok, before, after)\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=repo)
    out = res.stdout + res.stderr
    ok, before, after = out.split()
    assert ok == "True" and int(before) - int(after) > 100_000, out   # > 100 MB (kB units) returned
