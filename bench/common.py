"""Shared helpers for the benchmarks: percentiles, a figures table, and JSON output."""

from __future__ import annotations

import json
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.5), 3),
        "p95": round(percentile(values, 0.95), 3),
        "mean": round(statistics.fmean(values), 3) if values else None,
    }


def emit(name: str, figures: dict, rows: list[tuple[str, str]]) -> None:
    """Print a readable table, then the JSON figures on one line (for RESULTS.md)."""
    print(f"\n## {name}  ({platform.processor() or platform.machine()}, python {sys.version.split()[0]})")
    width = max(len(k) for k, _ in rows) if rows else 10
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("JSON " + json.dumps({"bench": name, "time": time.strftime("%Y-%m-%d %H:%M"), **figures}))


def free_port() -> int:
    """A loopback port nothing listens on now (the benchmarked app binds it next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, limit_s: float, poll_s: float = 0.5) -> None:
    """Return once `url` answers 200; raise if `proc` exits first or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(poll_s)
    raise RuntimeError(f"the app did not answer at {url} within {limit_s:.0f} s")
