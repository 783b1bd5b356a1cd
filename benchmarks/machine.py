"""The machine a benchmark ran on, named the same way in every table it writes."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_model() -> str:
    """The CPU's model name from lscpu ("AMD EPYC", "Intel(R) Xeon(R) Processor"), or the architecture when lscpu
    does not name one (`platform.processor()` says only "x86_64" on Linux)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_line() -> str:
    """The model and the logical CPUs this process sees, e.g. "AMD EPYC, 2 CPUs"."""
    return f"{cpu_model()}, {os.cpu_count()} CPUs"
