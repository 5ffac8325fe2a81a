"""
The machine a result was measured on, named in every results file.

Example::

    >>> isinstance(cpu_name(), str) and cpu_name() != ""
    True
"""

import pathlib
import platform

__all__ = ["cpu_name"]


def cpu_name():
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere, else ``"unknown"``)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
