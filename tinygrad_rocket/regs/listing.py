"""Readable listings of regcmd entries and whole task lists (used by scripts/regdump.py, tests and debugging).

    0x0201_0000000b_104c  CNA.CVT_CON0               = 0x0000000b  DATA_SIGN=1 CVT_TYPE=1(add_first) CVT_BYPASS=1

Fields equal to 0 are left out; addresses, byte-valued and bit-pattern fields print in hex, signed fields in
decimal; fields with named values print the name in parentheses.
"""
from __future__ import annotations
from dataclasses import dataclass
from typing import Sequence
from tinygrad_rocket.regs.database import find_register
from tinygrad_rocket.regs.decode import DecodedEntry, EntryKind, decode_entry
from tinygrad_rocket.regs.entry import ENTRY_BYTES, TARGET_SHIFT, unpack_entry
from tinygrad_rocket.regs.fields import Field
from tinygrad_rocket.regs.tasklist import SLOT_ALIGN

SLOT_WORDS = SLOT_ALIGN // ENTRY_BYTES
NAME_WIDTH = 26                 # column for BLOCK.REGISTER

def word_text(word:int) -> str:
  """0x0201_0000000b_104c: target, value, offset separated."""
  target, value, offset = unpack_entry(word)
  return f"0x{target:04x}_{value:08x}_{offset:04x}"

def field_text(f:Field, v:int) -> str:
  s = f"{v:#x}" if (f.address or f.aligned or f.hex) and not f.signed else str(v)
  if f.values is not None and v in f.values: s += f"({f.values[v]})"
  return f"{f.name}={s}"

def entry_text(e:DecodedEntry) -> str:
  head = word_text(e.word)
  if e.kind is EntryKind.NOP: return f"{head}  NOP"
  if e.kind is EntryKind.MARKER:
    payload = e.word & ((1 << TARGET_SHIFT) - 1)  # TRM: "0x0041_xxxx_xxxx_xxxx", Mesa writes 0
    return f"{head}  MARKER" + (f"  payload={payload:#x}" if payload else "")
  if e.kind is EntryKind.OP_ENABLE:
    s = f"{head}  {'OP_ENABLE':<{NAME_WIDTH}} = 0x{e.value:08x}  {'|'.join(e.enabled) or '(no blocks)'}"
    if e.extra_bits: s += f"  reserved_bits={e.extra_bits:#x}"
    return s + (f"  ! {e.problem}" if e.problem else "")
  if e.kind is EntryKind.UNKNOWN: return f"{head}  ?{'':<{NAME_WIDTH - 1}} = 0x{e.value:08x}  ! {e.problem}"
  r = find_register(e.block, e.register)  # type: ignore[arg-type]
  parts = [field_text(f, e.fields[f.name]) for f in r.fields if e.fields[f.name]]
  if e.extra_bits: parts.append(f"reserved_bits={e.extra_bits:#x}")
  return f"{head}  {e.qualname:<{NAME_WIDTH}} = 0x{e.value:08x}  {' '.join(parts)}".rstrip()

def format_entry(word:int) -> str: return entry_text(decode_entry(word))

@dataclass(frozen=True)
class TaskSpan:
  start: int          # word index of the first entry
  count: int          # entries up to and including the op-enable (regcmd_count as Mesa submits it)
  terminated: bool    # ended by an op-enable entry (False: the data ran out first)
  padding: int        # zero words after it up to the next 64-byte slot

def split_tasks(words:Sequence[int]) -> tuple[list[TaskSpan], int]:
  """Task lists in a regcmd buffer: each ends at its op-enable entry and is followed by zero padding to the next
  64-byte slot. Returns the spans and the number of trailing zero words after the last one."""
  spans: list[TaskSpan] = []
  i, n = 0, len(words)
  while i < n:
    if all(int(w) == 0 for w in words[i:]): return spans, n - i
    j = i
    while j < n and decode_entry(int(words[j])).kind is not EntryKind.OP_ENABLE: j += 1
    if j == n:
      spans.append(TaskSpan(i, n - i, False, 0))
      return spans, 0
    end = j + 1
    pad = 0
    while end + pad < n and (end + pad) % SLOT_WORDS and int(words[end + pad]) == 0: pad += 1
    spans.append(TaskSpan(i, end - i, True, pad))
    i = end + pad
  return spans, 0

def disassemble(words:Sequence[int], base:int|None=None) -> list[str]:
  """One line per entry, prefixed by its byte offset (or IOVA when `base`, the buffer's IOVA, is given), with a
  header line per task."""
  def addr(i:int) -> str: return f"{i * ENTRY_BYTES:#06x}" if base is None else f"{base + i * ENTRY_BYTES:#010x}"
  spans, trailing = split_tasks(words)
  lines: list[str] = []
  for k, t in enumerate(spans):
    where = f"offset {t.start * ENTRY_BYTES:#x}" + ("" if base is None else f", iova {base + t.start * ENTRY_BYTES:#x}")
    state = f"regcmd_count {t.count}" if t.terminated else f"{t.count} entries, NO op-enable entry"
    lines.append(f"--- task {k}: {where}, {state} ---")
    lines += [f"{addr(i)}  {format_entry(int(words[i]))}" for i in range(t.start, t.start + t.count)]
    if t.padding: lines.append(f"        ({t.padding} zero word(s) of slot padding)")
  if trailing: lines.append(f"--- {trailing} trailing zero word(s) ---")
  return lines
