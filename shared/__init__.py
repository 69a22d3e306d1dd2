"""The application library: everything the Functions adapters, the CLI and the tests call.

Layers point one way: ``function_app.py`` -> ``shared`` -> ``scoring``. Nothing here imports
``function_app``; ``scoring`` imports nothing from here.
"""

import os as _os
import sys as _sys

# Arrow's allocator for the app's processes (the Functions host's worker, the CLI): the system
# allocator returns freed memory to the OS at once, where Arrow's default (mimalloc) keeps it
# cached. The app's Arrow work is slices read and written one after another (recording,
# preparation), so the cache only adds to the peak: recording a 1,000-sensor x 24 h chunk
# peaked ~30 MiB lower with it, as fast (issue 12; bench/bench_recording.py). pyarrow reads
# the variable when it is first imported, so it is set here, before the app imports pyarrow
# (an ARROW_DEFAULT_MEMORY_POOL already in the environment wins); if something imported
# pyarrow first, its default pool is switched. The scoring step (``scoring``, on Azure ML)
# keeps Arrow's default.
if _os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system") == "system" and (
    "pyarrow" in _sys.modules
):
    _pa = _sys.modules["pyarrow"]
    _pa.set_memory_pool(_pa.system_memory_pool())


def _release_large_blocks() -> None:
    """glibc: blocks of 1 MiB or more are mapped on their own and given back when freed.

    By default glibc raises its mapping threshold each time such a block is freed (up to 32
    MiB), after which the app's many short-lived buffers of 1-10 MiB (Arrow slices, COPY and
    Parquet pages, blob bytes) come from the heap and stay resident as fragments: recording a
    1,000-sensor x 24 h chunk grew ~12 MiB more that way (issue 12). A fixed threshold, as
    MALLOC_MMAP_THRESHOLD_ would set, keeps them out of the heap. Skipped when that variable
    is set, and where the C library is not glibc.
    """
    if not _sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in _os.environ:
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


_release_large_blocks()
