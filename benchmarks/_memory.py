"""Peak resident memory of a benchmark process on Linux (``VmHWM``, reset through ``/proc/self/clear_refs``)."""

import ctypes
import gc
import pathlib


def status_kib(field):
    """A field of ``/proc/self/status`` in KiB (``"VmRSS"``, ``"VmHWM"``)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def trim_and_reset_peak():
    """Collect garbage, return freed heap to the system and reset ``VmHWM`` to the current RSS (False if not allowed)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
