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
