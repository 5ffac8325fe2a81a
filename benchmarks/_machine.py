"""The machine a benchmark ran on, for the results files (``cpu_name()``, ``machine_info(...)``)."""

import os
import platform

from sqs_pyro.run.machine import cpu_name


def machine_info(device, threads):
    """CPU, logical CPUs, threads, torch and Python versions, device (and GPU), load average at the start."""
    import torch

    info = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info
