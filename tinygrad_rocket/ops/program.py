"""Register programs as data: an ordered dict {(block, register): {field: value} | AddressWrite}.

The op builders (conv.py, elementwise.py, pool.py) return one Program per task; `entries()` turns it into regcmd
entries through regs.write / regs.address. Keeping a task as a dict (not as encoded words) lets a caller change one
register of a known-good program (`override`, the emulator's tests) or move its buffers (`rebase`, the lowering
rules) before encoding.

A register written several times in one task (the DPU LUT upload: 2 x (LUT_ACCESS_CFG + 513 LUT_ACCESS_DATA writes),
rocket_fp16_ew_ppu.md §4.2) cannot be a dict entry. Such a task holds one `Writes` value under the key `WRITES`: an
ordered sequence of (block, register, fields) writes, emitted in place (lut.py puts it first). Programs without it are
unchanged, and `override` / `rebase` carry it along.
"""
from __future__ import annotations
from typing import Any, Mapping
from tinygrad_rocket import regs
from tinygrad_rocket.regs.values import PRECISION

# precision name -> 3-bit precision code (rocket_fp16_ew_ppu.md §1.1)
PREC = {name: code for code, name in PRECISION.items()}
Program = dict  # {(block, reg): dict of fields | regs.AddressWrite, and optionally WRITES: Writes}

class Writes(tuple):
  """Repeated register writes in stream order: a tuple of (block, register, {field: value})."""

WRITES = ("*", "writes")  # the key of a program's Writes (a 2-tuple like every other key; no register is named "*")

def entries(prog:Program) -> list:
  out = []
  for (block, reg), v in prog.items():
    if isinstance(v, Writes): out.extend(regs.write(b, r, **f) for b, r, f in v)
    else: out.append(v if isinstance(v, regs.AddressWrite) else regs.write(block, reg, **v))
  return out

class Set(dict):
  """An override that replaces a register's fields instead of merging into them."""

def override(prog:Program, changes:Mapping[tuple[str, str], Any]|None) -> Program:
  """A copy with some registers changed: {..} fields merged into the register's fields, Set({..}) the register's
  fields replaced, an AddressWrite the register made an address, None the entry removed (left to earlier jobs)."""
  p = dict(prog)
  for k, v in (changes or {}).items():
    if v is None: p.pop(k, None)
    elif isinstance(v, Writes): p[k] = v
    elif isinstance(v, (Set, regs.AddressWrite)) or isinstance(p.get(k), regs.AddressWrite): p[k] = dict(v) if isinstance(v, Set) else v
    else: p[k] = {**p.get(k, {}), **v}
  return p

def rebase(prog:Program, offsets:Mapping[int, int]) -> Program:
  """A copy whose addresses into buffer slot s point `offsets[s]` bytes further (one image of a batch in a buffer
  that holds them all)."""
  return {k: regs.address(v.block, v.register, v.slot, v.offset + offsets[v.slot])
          if isinstance(v, regs.AddressWrite) and offsets.get(v.slot) else v for k, v in prog.items()}

def field_max(block:str, reg:str, field:str) -> int:
  """The largest value a register field holds (a hardware limit read off the register map)."""
  return next(f for f in regs.find_register(block, reg).fields if f.name == field).value_range()[1]
