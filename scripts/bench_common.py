"""What every benchmark script shares: the line that says when, on what and against what a table was measured
(docs/benchmarks.md keeps one per run)."""
from __future__ import annotations
import datetime, os, platform, subprocess

def run_line(emulated:bool) -> str:
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
  return (f"{datetime.date.today()}, commit {commit}, {platform.machine()} {os.cpu_count()} cores, "
          f"{'emulator' if emulated else 'NPU'}, tinygrad CPU device with {os.environ.get('CC', 'clang')}")
