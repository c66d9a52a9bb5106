#!/usr/bin/env python3
"""Readable listing of an RK3588 NPU regcmd buffer (a dumped regcmd BO, e.g. Mesa's ROCKET_DEBUG=dump_bos output).

    python scripts/regdump.py mesa-regcmd-000-000.bin [--base 0x100000] [--count 130]

FILE is raw little-endian u64 entries, or text with one hex word per line (0x and _ optional; '#' comments and
blank lines ignored; a token spelled like the listing's 0xTTTT_VVVVVVVV_OOOO is taken wherever it is on the line, so
this tool's own output can be fed back).
Tasks are split at their op-enable entries (the end of the 4-entry PC tail); zero padding to the next 64-byte
slot is summarised.
"""
from __future__ import annotations
import argparse, importlib, pathlib, re, sys, types

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEX_WORD = re.compile(r"^(0x)?[0-9a-f_]+$", re.IGNORECASE)
LISTED_WORD = re.compile(r"^0x[0-9a-f]{4}_[0-9a-f]{8}_[0-9a-f]{4}$", re.IGNORECASE)  # listing.word_text

def _regs() -> types.ModuleType:
  # Only tinygrad_rocket.regs (and numpy) is needed: load it without the package __init__, which imports tinygrad
  # and the device layer, so the tool also runs on a machine that only has a capture.
  if "tinygrad_rocket" not in sys.modules:
    pkg = types.ModuleType("tinygrad_rocket")
    pkg.__path__ = [str(ROOT / "tinygrad_rocket")]
    sys.modules["tinygrad_rocket"] = pkg
  return importlib.import_module("tinygrad_rocket.regs")

def parse_text(text:str) -> list[int]|None:
  """Words of a hex text capture, or None if `text` is not one."""
  words = []
  for line in text.splitlines():
    tok = line.split("#", 1)[0].split()
    if not tok or tok[0].startswith(("---", "(")): continue  # listing headers and padding notes
    word = next((t for t in tok if LISTED_WORD.match(t)), tok[0])
    if not HEX_WORD.match(word): return None
    w = int(word.replace("_", ""), 16)
    if w >= 1 << 64: return None
    words.append(w)
  return words

def read_words(data:bytes) -> list[int]:
  try: text = data.decode("ascii")
  except UnicodeDecodeError: text = None
  if text is not None and (words := parse_text(text)) is not None and words: return words
  if len(data) % 8: raise SystemExit(f"regdump: {len(data)} bytes is not a whole number of 8-byte entries (and not hex text)")
  return [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data), 8)]

def main(argv:list[str]|None=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("file", type=pathlib.Path, help="raw little-endian u64 entries, or hex text (one word per line)")
  ap.add_argument("--base", type=lambda s: int(s, 0), default=None, help="IOVA of the buffer's first byte")
  ap.add_argument("--count", type=int, default=None, help="list only the first N entries")
  args = ap.parse_args(argv)
  words = read_words(args.file.read_bytes())
  if args.count is not None: words = words[:args.count]
  try: print("\n".join(_regs().disassemble(words, base=args.base)))
  except BrokenPipeError: pass  # piped into head/less that quit early
  return 0

if __name__ == "__main__":
  sys.exit(main())
