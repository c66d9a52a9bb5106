#!/usr/bin/env python3
"""Measure the LUT tables of tinygrad_rocket/ops/lut.py (FUNCTIONS) and write docs/lut.md.

    python scripts/lut_error.py            # writes docs/lut.md
    python scripts/lut_error.py --check    # also runs every table on the emulator and checks model == emulator

Every number is measured by ops.lut.measure: the model at every finite fp16 input against the float64 function, plus
the input rounding (the NPU sees fl16(x)); see docs/lut.md for the definitions.
"""
from __future__ import annotations
import argparse, datetime, pathlib, subprocess, sys
import numpy as np
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tinygrad_rocket.ops import lut as L   # noqa: E402
from tinygrad_rocket.rules import tables as T   # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
GATE_X = 8.0   # |x| up to which the two-pass x * gate(x) bound is quoted

def fmt_dom(d:tuple[float, float]) -> str:
  f = lambda v: "-inf" if v == -np.inf else "inf" if v == np.inf else f"{v:.6g}"
  return f"[{f(d[0])}, {f(d[1])}]"

def rows() -> list[str]:
  out = ["| function | interval | BN_MUL (index scale) | BN_ALU | S = 2^(15-MINUS_EXP), OFFSET | domain | max abs error | max rel error | note |",
         "|---|---|---|---|---|---|---|---|---|"]
  for name, F in L.FUNCTIONS.items():
    t = L.standard_table(name)
    if isinstance(t, str):
      out.append(f"| {name} | [{F.lo:g}, {F.hi:g}] | | | | refused | | | {t.split(': ', 1)[1]} |")
      continue
    note = F.note
    if name in ("sigmoid", "gelu_gate_erf", "gelu_gate_tanh", "hardswish_gate"):
      note += f"; x * gate(x) for \\|x\\| <= {GATE_X:g}: {GATE_X * t.max_abs_error:.3g} + the EW multiply's fp16 rounding"
    if name == "sigmoid_2x": note += f"; tanh bound {2 * t.max_abs_error:.3g} + the affine pass's rounding"
    rel = f"{t.max_rel_error:.3g}" if t.max_rel_error is not None else "-"
    out.append(f"| {name} | [{t.lo:g}, {t.hi:g}] | {t.scale:g} (`{t.bn_mul:#06x}`) | {t.bias:g} | {2 ** (15 - t.out_minus_exp):g}, "
               f"{t.out_offset} | {fmt_dom(t.domain)} | {t.max_abs_error:.3g} | {rel} | {note} |")
  return out

def recip_rows() -> list[str]:
  """The reciprocal and rsqrt seeds over each of their windows (scaled to window 0's outputs, rules/tables.py Newton) and
  the measured error after each Newton step."""
  out = ["| function | window | ratio | seed scale | seed (step 0) | step 1 | step 2 | step 3 | used |", "|---|---|---|---|---|---|---|---|---|"]
  for kind, (fn, windows) in T.NEWTON_FUNCTIONS.items():
    for w, (lo, hi) in enumerate(windows):
      s = T.seed_scale(kind, lo)
      t = L.make_table(lambda x: s * fn(x), lo, hi, name=f"{kind}_seed")
      if isinstance(t, str):
        out.append(f"| {kind} | [{lo:g}, {hi:g}] | {hi / lo:g} | {s:g} | refused: {t} | | | | |")
        continue
      errs = T.newton_errors(kind, t, T.NEWTON_MAX_STEPS, lo, hi, s)
      nt = T.newton_window(kind, w)
      used = f"window {w}, {nt.steps} steps" if nt is not None else ""
      out.append(f"| {kind} | [{lo:g}, {hi:g}] | {hi / lo:g} | {s:g} | " + " | ".join(f"{e:.3g} (2^{np.log2(e):.1f})" for e in errs) + f" | {used} |")
  return out

def check() -> None:
  from tinygrad_rocket.emu import programs as P
  from tinygrad_rocket.ops.elementwise import FLYING_ENABLE
  for name in L.FUNCTIONS:
    t = L.standard_table(name)
    if isinstance(t, str): continue
    xs = L.all_fp16()
    x = xs[(xs >= t.domain[0]) & (xs <= t.domain[1])]
    x = np.concatenate([x, np.full(-len(x) % 8, x[-1])]).astype(np.float16)
    r = P.run_program(L.lut_programs(len(x), t, {"input": 0, "output": 1}), {0: x.tobytes(), 1: 2 * len(x)}, [1], enable=FLYING_ENABLE)
    assert r.failure is None, (name, r.failure)
    same = np.array_equal(np.frombuffer(r.out[1], np.uint16)[:len(x)], t.model(x).astype(np.float16).view(np.uint16))
    print(f"{name:15s} {len(x):6d} inputs: model == emulator: {same}")

DOC = """# DPU LUT activations

`tinygrad_rocket/ops/lut.py` builds lookup tables for the DPU's EW-stage LUT (rocket_fp16_ew_ppu.md §4), models what the
hardware computes with them, measures the error, and emits the flying DPU task; `tinygrad_rocket/emu/dpu.py` executes
such tasks (and other drivers' LUT programs, `tests/fidelity/test_lut_fidelity.py`).

## Hardware model (both the emulator and `LutTable.model`, written separately, agree bit for bit)

* Upload: `LUT_ACCESS_CFG` (ACCESS_TYPE 1 = write, TABLE_ID 0 LE / 1 LO, ADDR 0) then 513 `LUT_ACCESS_DATA` writes, per
  table (1026 DATA writes, all in the task's regcmd list; `ops/program.py` `Writes`). One LUT RAM per core, persisting
  across tasks and jobs; the emulator keeps it in `core.LutStorage` and refuses a LUT task while any entry is unknown
  (never written since reset, or touched by a port access no source documents).
* Index: `X = fp32(fp32(x) * fp16(BN_MUL)) + fp32(BN_ALU)` (BN stage: MUL then ALU, GN's measured order).
* Tables: LE covers `X` in [-16384, 0], LO [0, 16384], 513 entries each, 32 index units per segment (INDEX_SELECT 5);
  `X = 0` reads LO (HYBRID_PRIORITY 1); below LE: `LE[0] + (X + 16384) * UFLOW_SCALE / 2^UFLOW_SHIFT` (LE slope
  registers), above LO: `LO[512] + (X - 16384) * OFLOW_SCALE / 2^OFLOW_SHIFT` (LO slope registers); linear
  interpolation; rounded once to fp32. Only this geometry and LUT_CFG 0x68 (GN, AB) are accepted.
* Output: `(v + OUT_CVT_OFFSET) * 2^-MINUS_EXP * OUT_CVT_SCALE` (CVT_TYPE 1), fp32, then fp16 (round to nearest even).
* Entries: unsigned Q0.15 (0..0x7FFF; larger entries' sign is unknown: refused when read).

### Table choice: index, not sign(x) (⚠)

The reference (§4.3, from GN's "QUIRK 2" note) says the LE/LO choice follows the sign of the pre-BN input, not the index.
GN's own hardware runs of shifted single tables contradict that as a whole-domain rule: exp on [-16, 0] puts every
(negative) input in the LO half via BN_ALU with LE filled flat and reads 5.5e-4; the shifted tanh (BN_ALU 8192) reads
ACC 0.0007; shifted ELU/Abs work. The emulator therefore selects by index (NVDLA's hit logic) and treats sign(x) as the
trigger of the x ~ 0 spike. `make_table` builds tables whose index has the sign of x on the whole claimed domain
(BN_ALU -0.0 for intervals around 0; one-sided intervals shifted to start at X = 0 on their own side), and `measure`
never claims inputs where the two readings would differ, so its numbers hold under either reading.

## Quirks (rocket_fp16_ew_ppu.md §4.6, GN [HW])

| quirk | emulator | ops/lut.py |
|---|---|---|
| q = 0 entry decodes to ~4.0 | reproduced: an interpolated value of exactly 0 with OFFSET 0 outputs 4.0 (GN's exp without the floor); with another OFFSET, refused | every entry >= 1 |
| x ~ 0 with a signed decode (negative OFFSET) spikes +64..+128 | refused when an input has `\\|x * BN_MUL\\| < 4` index units (twice GN's ~R/8192 band) | unsigned decode whenever fn >= 0; a signed decode only for intervals at least 8 index units clear of 0; otherwise `make_table` returns the reason |
| exactly flat regions mis-toggle the mux (+16..+128) | with a signed decode: refused when an input reads a run of >= 3 equal entries or the LE underflow with slope 0 (GN's unsigned exp/sigmoid read long flat runs cleanly, its tanh reads pairs) | no run of 3 equal entries (the middle one moved by one quantum, counted in the error) |
| cols = 8191 corrupts ~54 positions | refused (any 13-bit dim of 8191, existing check) | `lut_programs` tiles at 4096 cols |

Settings no source ran are refused with the reason: other LUT_CFG values (EXPAND_EN, exponent mode, ROAD_SEL, CAL_SEL,
UFLOW_PRIORITY 1, other mux), INDEX_SELECT other than 5, other table bounds, slope scales >= 0x8000, an active BS stage,
BN not `x * MUL + ALU`, EW ReLU / converter / an EW ALU or MUL op with the LUT (GN's 0x300 and AB's op-bypassed word
are accepted, the op taken as having no effect), LUT output other than fp16, NaN inputs.

## API (`tinygrad_rocket/ops/lut.py`)

* `make_table(fn, lo, hi, *, name) -> LutTable | str`: fn a float64 numpy function, [lo, hi] the interval to cover.
* `LutTable`: `entries_le`, `entries_lo` (513 ints each), `bn_mul` (fp16 bits), `bn_alu` (fp32 bits), `le_uflow`,
  `lo_oflow` ((scale, shift)), `out_offset`, `out_minus_exp`, `out_scale`, `index_select`, `le_start/le_end/lo_start/
  lo_end`, `domain`, `max_abs_error`, `max_rel_error`; `registers()` (every DPU register field of the LUT path),
  `upload()` (the port writes), `index(x)`, `lookup(X)`, `model(x_fp16) -> fp32`.
* `lut_program(n, table, slots, out_prec="fp16") -> Program` (n a multiple of 8, at most 4096 * 8) and
  `lut_programs(n, table, slots) -> list[Program]` (tiles; every task uploads, since the LUT RAM is per core).
* `FUNCTIONS`, `standard_table(name)`: the functions measured below.

## Measured error

`max_abs_error` bounds `|fn(x) - model(fl16(x))|` for every real x in `domain`: the model is evaluated at every finite
fp16 input and compared with fn in float64; for x between neighbouring fp16 values x_k, x_k+1 the input rounding adds at
most the largest secant slope of that cell and its neighbours times half the cell. The interval [lo, hi] sets the
bound; the domain is the largest run of cells around it within the same bound (+-inf: every finite fp16 input on that
side). The output's own fp16 rounding (half an ulp of the result) comes on top. `max_rel_error` is the bound relative
to |fn|, given where |fn| stays above 64 LUT quanta. For smooth fn the bound is dominated by the input rounding, the
interpolation `h^2/8 max|f''|` (h = 32 / BN_MUL) and 0.5..1.5 LUT quanta; `tests/test_lut.py` checks it against that
a-priori bound, checks the model equals the emulator bit for bit on every fp16 input of the domain, and checks the
bound on random float32 inputs including the claimed tails.

Generated by `scripts/lut_error.py` on {date}, commit {commit}.

{table}

Notes: uniform grids are poor near 0 for reciprocal / sqrt / rsqrt / log: the error sits at the low end of the
interval (reciprocal 1.3% at x = 0.25; GN measured 0.4-1% on hardware for its defaults); narrow the interval to the
data, or scale the input into it. The signed single-pass tanh/SiLU/GELU are not offered (x ~ 0 spike): use the [0, 1]
gates with an EW multiply by x (§4.5) or `tanh = 2 sigmoid(2x) - 1`. GN's hardware numbers for its own tables are
reproduced by the emulator (`tests/fidelity/test_lut_fidelity.py`: sigmoid 0.00146, tanh 0.0034 vs the fp16 reference;
exp 3.7e-4 vs float64 where GN reports 5.5e-4 with an unstated reference).

## Reciprocal: a guarded table seed refined by Newton steps

1/x is needed accurately (softmax's `1/sum`, layernorm's `1/std`, any division by a loaded value) and neither a uniform
grid (above: 1.3% at the low end) nor the unvalidated EW DIV (rocket_fp16_ew_ppu.md §3.2, atol 0.1) gives it. The rule
(`rules/elementwise.py` `Compiler.reciprocal`, `rules/tables.py` `newton_reciprocal`) tabulates a seed y0 on an interval
(the guard sends calls whose argument leaves it to the next window's program, then to the C code) and refines it with
Newton steps as conv-fed stages:
`p = -x y` (fp32; exact while y is fp16), `e = 1 + p` (exact, then narrowed to fp16: a small correction, its rounding
costs u16 |e|), `y' = (1 + e) y` (fp32). Each step maps the relative error eps = 1 - x y to at most
`eps^2 + eps u16 (1 + eps) + 3 u32`. The table below is measured over every fp16 x of each window through exactly
those fp16/fp32 roundings (the emulator gives the same bits, `tests/test_reciprocal.py`, `tests/test_range_windows.py`):
max |1 - y_k / f(x)|. A uniform grid's seed error grows with the square of the window's ratio (its interpolation near
the low end), so a ratio of 1024 is the most 3 steps (3 stages each) bring within `RECIP_MAX_REL_ERROR` = 2^-12 (half an
fp16 rounding); a window is used only if it does, within `NEWTON_MAX_STEPS` = 3.

{recip}

Range windows (`RANGE_WINDOWS` = 5, `rules/tables.py`): a kernel with such a seed (or a guarded table of another power
function, sqrt: `TABLE_SCALES`) is lowered once per window, each program guarding its own, and the runner tries them in
order: a call whose argument lies in any one window runs on the NPU. The seed of every window holds `seed scale` times
the function, so its outputs are window 0's (a LUT's output quantum is at least 2^-15, too coarse for 1/x near 2^-14
unscaled: [2^4, 2^14] would start at 0.553); the first step's CORE coefficients divide the scale out exactly, so a window
at a power-of-2 multiple of window 0 (rsqrt: of 4) has window 0's errors exactly. 1/x's windows: [2^-4, 2^6] (layernorm's
std, softmax rows up to 63 elements), [63/64, 1008] (every softmax row of up to 1006 elements, a confident row's sum of 1
included), [2^4, 2^14], [2^-12, 2^-2] (the lowest: the table's fp16 index scale is at most 65504 over 16384 index units,
so a narrower window uses fewer segments), [2^6, 65504]. Calls outside every window take the C code with the guard's
reason.

1/sqrt(x) (`Ops.RECIPROCAL` of `Ops.SQRT`: tinygrad's rsqrt, layernorm's and RMSNorm's `rsqrt(var + eps)`) takes the same
route with y' = (1 + e/2) y, e = 1 - x y^2 (4 stages per step: y is an fp16 main term of `q = y * (-x y)`, so the
steps before the last narrow y, which the next step squares away); each step maps eps to at most
`3/2 eps^2 + 1/2 eps^3 + (1 + eps)(2 eps + eps^2) u16/2 + 4 u32`. Its windows are var + eps for std in [1/8, 4], [4, 128],
[2^-6, 1/2], [2^-5, 1] and [8, 256].
"""

def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--check", action="store_true", help="also check model == emulator on every domain input")
  ap.add_argument("--out", default=str(ROOT / "docs" / "lut.md"))
  a = ap.parse_args()
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
  text = DOC.format(date=datetime.date.today().isoformat(), commit=commit or "?", table="\n".join(rows()), recip="\n".join(recip_rows()))
  pathlib.Path(a.out).write_text(text)
  print(f"wrote {a.out}")
  if a.check: check()

if __name__ == "__main__":
  main()
