"""ops/lut.py: LUT tables, their numpy model, the measured error, the task, against the emulator's LUT.

For every studied function (ops.lut.FUNCTIONS):
- the model (written from the reference in ops/lut.py) and the emulator (tinygrad_rocket/emu/dpu.py, written apart)
  give the same fp16 bits on every fp16 input of the claimed domain, running lut_programs through EmuFile;
- the claimed bound holds for random float32 inputs (the NPU sees fl16(x)), tails outside [lo, hi] included where the
  domain reaches there: |out - fn(x)| <= max_abs_error + half an fp16 ulp of the output (the final rounding);
- the measured bound stays under the a-priori one (interpolation h^2/8 max|f''| + 1.5 LUT quanta of entry rounding and
  run breaking + the input rounding max|f'| ulp/2): measure() is not fooling itself;
- the table is built so the §4.6 quirks cannot occur (q >= 1, no runs of 3, sign(X) = sign(x), unsigned decode near 0).
"""
from __future__ import annotations
import numpy as np
import pytest
from tinygrad_rocket.emu import programs as P
from tinygrad_rocket.ops import lut as L
from tinygrad_rocket.ops.program import entries, override, WRITES, Writes
from tinygrad_rocket.ops.elementwise import FLYING_ENABLE
from tinygrad_rocket import regs

SLOTS = {"input": 0, "output": 1}
TABLES = {name: L.standard_table(name) for name in L.FUNCTIONS}
BUILT = [n for n, t in TABLES.items() if not isinstance(t, str)]

def run(table:L.LutTable, x:np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float16)
  n = len(x) + (-len(x) % 8)
  xp = np.concatenate([x, np.zeros(n - len(x), np.float16) + x[-1]])
  r = P.run_program(L.lut_programs(n, table, SLOTS), {0: xp.tobytes(), 1: 2 * n}, [1], enable=FLYING_ENABLE)
  assert r.failure is None, r.failure
  return np.frombuffer(r.out[1], np.float16)[:len(x)]

def domain_inputs(t:L.LutTable) -> np.ndarray:
  xs = L.all_fp16()
  return xs[(xs >= t.domain[0]) & (xs <= t.domain[1])]

def half_ulp16(y:np.ndarray) -> np.ndarray:
  a = np.abs(np.asarray(y, np.float64)).astype(np.float16)
  return (np.nextafter(a, np.float16(np.inf)).astype(np.float64) - a.astype(np.float64)) / 2

@pytest.mark.parametrize("name", BUILT)
def test_model_matches_the_emulator_bit_for_bit(name):
  t = TABLES[name]
  x = domain_inputs(t)
  got = run(t, x)
  want = t.model(x).astype(np.float16)
  bad = got.view(np.uint16) != want.view(np.uint16)
  assert not bad.any(), f"{name}: {bad.sum()} of {len(x)} differ, first at x = {x[bad][0]}: {got[bad][0]} vs {want[bad][0]}"

@pytest.mark.parametrize("name", BUILT)
def test_bound_holds_on_random_float32(name):
  t, f = TABLES[name], L.FUNCTIONS[name].fn
  rng = np.random.default_rng(abs(hash(name)) % 2 ** 32)
  lo, hi = max(t.domain[0], -L.F16_MAX), min(t.domain[1], L.F16_MAX)
  parts = [rng.uniform(t.lo, t.hi, 3000)]
  for a, b in ((lo, t.lo), (t.hi, hi)):                  # the tails the domain claims, log-spread away from the interval
    if b - a > 0: parts.append(a + (b - a) * (1 - rng.power(0.2, 1000)) if b == t.lo else a + (b - a) * rng.power(0.2, 1000))
  x32 = np.concatenate(parts).astype(np.float32)
  x32 = x32[(x32 >= lo) & (x32 <= hi)]
  out = run(t, x32.astype(np.float16)).astype(np.float64)
  err = np.abs(out - f(x32.astype(np.float64))) - half_ulp16(out)
  assert err.max() <= t.max_abs_error, f"{name}: {err.max():.4g} > {t.max_abs_error:.4g} at x = {x32[err.argmax()]}"

@pytest.mark.parametrize("name", [n for n in BUILT if L.FUNCTIONS[n].smooth])
def test_measured_error_under_the_a_priori_bound(name):
  t, F = TABLES[name], L.FUNCTIONS[name]
  x = np.linspace(t.lo, t.hi, 200001)
  f = F.fn(x)
  d1 = np.gradient(f, x)
  d2 = np.gradient(d1, x)
  h = L.STEP / t.scale                                    # one table segment in x
  ulp = np.abs(np.nextafter(np.abs(x).astype(np.float16), np.float16(np.inf)).astype(np.float64) - np.abs(x).astype(np.float16))
  prior = h * h / 8 * np.abs(d2).max() + 1.5 * t.quantum + (np.abs(d1) * ulp / 2).max() * 1.01 + 1e-6 * np.abs(f).max()
  assert t.max_abs_error <= prior, f"{name}: measured {t.max_abs_error:.4g} > a-priori {prior:.4g}"

@pytest.mark.parametrize("name", BUILT)
def test_tables_avoid_the_quirks_by_construction(name):
  t = TABLES[name]
  T = np.array([t.entries_le, t.entries_lo])
  assert T.shape == (2, L.LUT_ENTRIES) and T.min() >= L.Q_MIN and T.max() <= L.Q_MAX          # QUIRK 4, unsigned entries
  assert not ((T[:, 2:] == T[:, 1:-1]) & (T[:, 1:-1] == T[:, :-2])).any()                      # QUIRK 1
  x = domain_inputs(t)
  X = t.index(x).astype(np.float64)
  nz = x != 0
  assert np.all((X[nz] >= 0) == (x[nz] > 0)), "the index must have the sign of x: LE/LO by X = by sign(x)"
  if t.signed: assert np.abs(x.astype(np.float64) * t.scale).min() >= L.X0_CLEARANCE                 # QUIRK 2

def test_refusals():
  assert "QUIRK 2" in TABLES["tanh"]
  assert isinstance(L.make_table(np.sin, -0.01, 0.01, name="narrow"), str)      # index scale beyond fp16
  assert isinstance(L.make_table(np.log, 0.0, 1.0, name="log0"), str)            # log(0) is not finite
  assert isinstance(L.make_table(np.exp, 0.0, 20.0, name="big"), str)            # output wider than 2^15
  t = TABLES["sigmoid"]
  for n in (12, 8 * (L.LUT_MAX_COLS + 1)):
    with pytest.raises(ValueError): L.lut_program(n, t, SLOTS)
  with pytest.raises(ValueError): L.lut_program(64, t, SLOTS, out_prec="fp32")

def test_program_uploads_first_and_tiles():
  t = TABLES["sigmoid"]
  prog = L.lut_program(64, t, SLOTS)
  assert next(iter(prog)) == WRITES and isinstance(prog[WRITES], Writes)
  words = entries(prog)
  names = [regs.decode_entry(w).register for w in words[:1028]]
  assert names == (["LUT_ACCESS_CFG"] + ["LUT_ACCESS_DATA"] * 513) * 2
  assert [regs.decode_entry(w).fields["LUT_ACCESS_DATA"] for w in words[1:514]] == list(t.entries_le)
  assert entries(override(prog, {("DPU", "BN_ALU_CFG"): {}}))[:1028] == words[:1028]   # override keeps the upload
  progs = L.lut_programs(8 * L.LUT_MAX_COLS * 2 + 16, t, SLOTS)
  assert len(progs) == 3 and all(WRITES in p for p in progs)
  x = np.linspace(-10, 10, 8 * L.LUT_MAX_COLS * 2 + 16).astype(np.float16)
  assert np.array_equal(run(t, x).view(np.uint16), t.model(x).astype(np.float16).view(np.uint16))

# Every LUT register field the emulator reads (descs.LUT_FIELDS), with the tests whose outcome depends on it: part of
# tests/test_emu_blocks.py::COVERAGE, which checks them against descs.DECODED_FIELDS and that the tests exist.
FID, HERE = "tests/fidelity/test_lut_fidelity.py::", "tests/test_lut.py::"
LUT_COVERAGE = {
  **{("DPU", "LUT_CFG", f): (FID + "test_unvalidated_lut_settings_are_refused",) for f in
     ("LUT_CAL_SEL", "LUT_HYBRID_PRIORITY", "LUT_OFLOW_PRIORITY", "LUT_UFLOW_PRIORITY", "LUT_LO_LE_MUX", "LUT_EXPAND_EN", "LUT_ROAD_SEL")},
  **{("DPU", "LUT_INFO", f): (HERE + "test_lut_geometry_is_checked",) for f in ("LUT_LO_INDEX_SELECT", "LUT_LE_INDEX_SELECT")},
  **{("DPU", f"LUT_{r}", f"LUT_{r}"): (HERE + "test_lut_geometry_is_checked",) for r in ("LE_START", "LE_END", "LO_START", "LO_END")},
  **{("DPU", f"LUT_{t}_SLOPE_{k}", f"LUT_{t}_SLOPE_{e}_{k}"): (FID + "test_gn_lut_program", HERE + "test_bound_holds_on_random_float32")
     for t, e in (("LE", "UFLOW"), ("LO", "OFLOW")) for k in ("SCALE", "SHIFT")},
  **{("DPU", f"LUT_{t}_SLOPE_{k}", f"LUT_{t}_SLOPE_{e}_{k}"): (HERE + "test_lut_geometry_is_checked",)
     for t, e in (("LE", "OFLOW"), ("LO", "UFLOW")) for k in ("SCALE", "SHIFT")},
}

@pytest.mark.parametrize("reg,fields,why", [
  ("LUT_INFO", dict(LUT_LO_INDEX_SELECT=4, LUT_LE_INDEX_SELECT=4), "INDEX_SELECT"),
  ("LUT_LE_START", dict(LUT_LE_START=-8192), "LUT LE"), ("LUT_LE_END", dict(LUT_LE_END=16), "LUT LE"),
  ("LUT_LO_START", dict(LUT_LO_START=16), "LUT LE"), ("LUT_LO_END", dict(LUT_LO_END=8192), "LUT LE"),
  ("LUT_LE_SLOPE_SCALE", dict(LUT_LE_SLOPE_UFLOW_SCALE=0x8000), "sign"), ("LUT_LO_SLOPE_SCALE", dict(LUT_LO_SLOPE_OFLOW_SCALE=0x9000), "sign"),
])
def test_lut_geometry_is_checked(reg, fields, why):
  """Table bounds and steps other than GN's, and slope scales with the sign bit, are refused; LE_OFLOW / LO_UFLOW are not
  read by the validated LUT_CFG (underflow reads LE, overflow LO), so writing them changes nothing."""
  t = TABLES["sigmoid"]
  x = np.array([-30, -20, 0.5, 1, 2, 30, 40, 5], np.float16)      # reaches both extrapolations
  prog = override(L.lut_program(8, t, SLOTS), {("DPU", reg): fields})
  r = P.run_program(prog, {0: x.tobytes(), 1: 16}, [1], enable=FLYING_ENABLE)
  assert r.failure is not None and why in r.failure, r.failure
  unread = {("DPU", "LUT_LE_SLOPE_SCALE"): dict(LUT_LE_SLOPE_OFLOW_SCALE=999), ("DPU", "LUT_LE_SLOPE_SHIFT"): dict(LUT_LE_SLOPE_OFLOW_SHIFT=3),
            ("DPU", "LUT_LO_SLOPE_SCALE"): dict(LUT_LO_SLOPE_UFLOW_SCALE=999), ("DPU", "LUT_LO_SLOPE_SHIFT"): dict(LUT_LO_SLOPE_UFLOW_SHIFT=3)}
  r = P.run_program(override(L.lut_program(8, t, SLOTS), unread), {0: x.tobytes(), 1: 16}, [1], enable=FLYING_ENABLE)
  assert r.failure is None and np.array_equal(np.frombuffer(r.out[1], np.float16), t.model(x).astype(np.float16))

