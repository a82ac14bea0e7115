"""glibc's malloc, told to give freed tensors back to the system during a sharded run.

PyTorch allocates CPU tensors with plain ``malloc``. glibc maps an allocation
of its *mmap threshold* or more on its own and unmaps it when it is freed;
smaller ones come from its heap, whose freed memory stays resident until it
happens to be reused. The threshold starts at 128 KiB and, by default, rises
to the size of every mapped block freed, up to 32 MiB. Under FSDP a rank
gathers and frees each decoder layer's weights (4-14 MiB tensors for a
1,024-wide Llama) and unsharded gradients over and over, while the long-lived
shards, sharded gradients and AdamW state it allocates in between pin the
heap: measured on the 1.05 GiB teacher of issue 23 (docs/benchmarks.md,
"FSDP memory"), each rank kept 0.5-1 GiB of freed memory resident, a
different amount every run, which is more than all its transient tensors.

:func:`return_freed_memory` fixes the threshold at 1 MiB (``mallopt``, as
``MALLOC_MMAP_THRESHOLD_=1048576`` would), so every tensor of 1 MiB or more
goes back to the system when freed. The price is page faults when such
memory is touched again, a fixed cost per step: on that teacher, 2 CPU ranks
of 64 tokens a step spent about 18% more CPU time a step (2.3 CPU-seconds of
12.6); with more tokens a step, or on GPU, where the gathered weights are not
on the host, the share is small. A user's own ``MALLOC_*`` or
``GLIBC_TUNABLES`` malloc settings win: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Mapping

#: ``M_MMAP_THRESHOLD`` of glibc's ``mallopt``
M_MMAP_THRESHOLD = -3
#: allocations from this size on are mapped on their own, and unmapped when freed
MMAP_THRESHOLD = 1 << 20


def _user_tuned(environ: Mapping[str, str]) -> bool:
    return any(k.startswith("MALLOC_") for k in environ) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` for this process; whether it was set.

    Process-wide and kept for the rest of the process: called by a sharded
    ``distill`` only, before it loads anything. A no-op off Linux, on a C
    library without ``mallopt`` (or one that ignores it), and when the
    environment already tunes glibc's malloc.
    """
    if not sys.platform.startswith("linux") or _user_tuned(os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
