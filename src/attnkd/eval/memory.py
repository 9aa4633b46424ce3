"""Process memory readings (Linux /proc) for benchmarks that probe peak memory per process."""

from __future__ import annotations


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (e.g. 'VmRSS', 'VmHWM' = peak resident)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo, in bytes (0 if unknown)."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> int:
    """Reset VmHWM to the current RSS where the kernel allows it; return the baseline in kB."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return status_kb("VmRSS")
    except OSError:
        return status_kb("VmHWM")
