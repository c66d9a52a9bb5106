"""Where each kernel ran (NPU or CPU fallback) and why: ROCKET_DEBUG output and the numbers behind coverage reports."""
from __future__ import annotations
import sys
from dataclasses import dataclass, field
from tinygrad_rocket import config

@dataclass
class KernelRecord:
  name: str
  engine: str   # "npu" | "fallback"
  reason: str   # why a fallback kernel is not on the NPU; what an NPU kernel became
  runs: int = 0
  detail: dict[str, int] = field(default_factory=dict)   # counts summed over its runs (a call over several range
                                                          # windows: elements per program, "[its index among the
                                                          # kernel's window programs] summary")

_records: dict[tuple[str, str, str], KernelRecord] = {}

def kernel_ran(name:str, engine:str, reason:str, detail:dict[str, int]|None=None) -> None:
  if (rec:=_records.get(key:=(name, engine, reason))) is None: rec = _records[key] = KernelRecord(name, engine, reason)
  rec.runs += 1
  for k, v in (detail or {}).items(): rec.detail[k] = rec.detail.get(k, 0) + v
  if (lvl:=config.debug_level()) >= 2 or (lvl >= 1 and rec.runs == 1):
    print(f"ROCKET {engine:8s} {name}" + (f": {reason}" if reason else ""), file=sys.stderr)

def records() -> list[KernelRecord]: return list(_records.values())
def reset() -> None: _records.clear()
