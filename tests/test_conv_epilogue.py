"""Fused epilogues on the conv datapath (rules/conv.py): s*conv + t [+ residual], then [ReLU | ReLU6].

Strict mode (ROCKET_FALLBACK=0) proves the NPU ran the kernel; the report's summary proves the conv rule did (it starts
with "conv (", the contraction rule's with "contraction") and names what was fused. Bounds (numerics.py model):
  ROCKET: the weights are packed as fl16(w*s) and the operand t + r (a bias, BatchNorm's shift, a residual) as
    fl16(t + r) (one fp16 rounding each, relative 2^-11 and absolute 2^-25 below fp16's normal range, whatever the
    tensors' dtype), x as fp16 (exact for float16 tensors, rounded like the weights for float32); the products sum in
    fp32 and the DPU adds t + r in fp32 (BS or EW stage): a sum of n + 1 fp16 products (t + r times 1), numerics.
    bound_dot with both operands' roundings; ReLU / ReLU6 select or clamp (1-Lipschitz); one output rounding.
  CPU: an fp32 conv of n products (gamma(n-1)), then each epilogue op rounded to the tensors' dtype: k roundings of
    values bounded by M = |acc| max(1, |s|) + |t| + |r| (+ 6 for ReLU6's x - 6), each u|.| (+ the fp16 subnormal
    spacing), an error before the multiply by s scaled by |s| (M covers it).
|rocket - cpu| <= both bounds (numerics.assert_within)."""
import numpy as np
import pytest
from hypothesis import given, assume, reject, strategies as st
from tinygrad import Tensor, nn, dtypes
from tinygrad_rocket import report, analysis
from tinygrad_rocket._tg import Ops
from tinygrad_rocket.config import FallbackError
from tinygrad_rocket.lower import NotApplicable
from tinygrad_rocket.rules import conv as conv_rule
from tinygrad_rocket.emu import cost
import numerics as nm
from helpers import conv_case, env
from test_conv_rule import needs_counters

# kind -> (uses s, uses t, uses r, relu, relu6, constant epilogue), the summary's marks of what is fused
KINDS = {
  "bias": (0, 1, 0, 0, 0, 0), "bn": (1, 1, 0, 0, 0, 0), "bn_relu": (1, 1, 0, 1, 0, 0), "relu6": (0, 0, 0, 0, 1, 0),
  "bias_relu6": (0, 1, 0, 0, 1, 0), "residual": (0, 0, 1, 0, 0, 0), "bias_residual": (0, 1, 1, 0, 0, 0),
  "bn_residual_relu": (1, 1, 1, 1, 0, 0), "scale": (1, 0, 0, 0, 0, 0), "const": (0, 0, 0, 0, 0, 1)}
CONST_SCALE, CONST_SHIFT = 0.5, 3.0   # "const": y * 0.5 + 3 (the BS stage's fp32 add)

def epilogue(kind:str):
  us, ut, ur, relu, relu6, const = KINDS[kind]
  def fn(y, s, t, r):
    if const: y = y * CONST_SCALE + CONST_SHIFT
    if us: y = y * s.reshape(1, -1, 1, 1)
    if ut: y = y + t.reshape(1, -1, 1, 1)
    if ur: y = y + r
    return y.relu() if relu else y.relu6() if relu6 else y
  return fn

def marks(kind:str) -> list[str]:
  """What the conv rule's summary must name for this epilogue."""
  us, ut, ur, relu, relu6, const = KINDS[kind]
  return ([" +scale (weights)"] if us or const else []) + ([" +shift (BS add)"] if const else []) + \
         ([" +residual (fp16 EW operand)"] if ur else [" +per-channel shift (fp16 EW operand)"] if ut else []) + \
         ([" +relu"] if relu else [" +clip(0, 6)"] if relu6 else [])

def bounds(kind, dtype, x, w, s, t, r, conv64, n):
  """(ROCKET's bound, the CPU's bound) of the fused kernel (module docstring)."""
  us, ut, ur, relu, relu6, const = KINDS[kind]
  col = lambda v: np.abs(np.asarray(v, np.float64)).reshape(1, -1, 1, 1)
  sc = col(s) if us else np.full((1, w.shape[0], 1, 1), CONST_SCALE if const else 1.0)
  A = conv64(x, w)                                    # sum |x||w| >= |acc|
  T = np.abs((col(t) if ut else 0) + (np.abs(r) if ur else 0) + (CONST_SHIFT if const else 0))
  shifted, scaled = bool(ut or ur or const), bool(us or const)
  if shifted or scaled:   # fl16(w*s), fl16(t + r): rounded whatever the dtype
    p = nm.Precision(nm.U16, nm.ETA16, nm.U32, *((nm.U32, 0.0) if dtype == "float32" else (nm.U16, nm.ETA16)))
  else: p = nm.rocket(dtype)
  amax = float(np.abs(x).max() + (np.abs(w) * sc.reshape(-1, 1, 1, 1)).max() + T.max() + 1)
  b_rocket = nm.bound_dot(p, A * sc + T, n + shifted, amax)
  # CPU: the fp32 conv, then k roundings in the dtype (fp16: the cast of the sum first)
  u, eta = (nm.U32, 0.0) if dtype == "float32" else (nm.U16, nm.ETA16)
  k = (dtype == "float16") + 2 * bool(const) + bool(us) + bool(ut) + bool(ur) + 2 * bool(relu6)
  e_acc = nm.gamma(max(n - 1, 0), nm.U32) * A
  M = (A + e_acc) * np.maximum(1.0, sc) + col(t) * ut + (np.abs(r) if ur else 0) + CONST_SHIFT * const + 6 * relu6
  b_cpu = e_acc * sc * (1 + u) ** k + nm.gamma(k, u) * M + k * eta * np.maximum(1.0, sc) if k else e_acc * sc
  return b_rocket, b_cpu

def run(fn, arrays, device):
  ts = [Tensor(a, device=device).realize() for a in arrays]   # realized first: nothing else fuses into the kernel
  return fn(*ts).numpy()

def conv_records() -> list[str]:
  recs = report.records()
  assert recs and all(rec.engine == "npu" for rec in recs), [(r.engine, r.reason) for r in recs]
  return [rec.reason for rec in recs]

# ***** the fused kernels against the CPU *****

@given(batch=st.integers(1, 2), cin=st.integers(1, 20), cout=st.integers(1, 20), k=st.integers(1, 3), stride=st.integers(1, 2),
       dilation=st.integers(1, 2), padding=st.integers(0, 2), extra=st.integers(0, 5), depthwise=st.booleans(),
       kind=st.sampled_from(sorted(KINDS)), dtype=st.sampled_from(["float32", "float16"]), big=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_epilogue_on_npu(batch, cin, cout, k, stride, dilation, padding, extra, depthwise, kind, dtype, big, seed):
  groups, cout = (cin, cin) if depthwise else (1, cout)
  # index forms analysis.py reads (helpers.conv_case), and an output plane of at least 12 pixels (the EW stage's
  # operand floor: smaller ones are the contraction rule's, test_small_plane_falls_back)
  size, out = conv_case(k, stride, dilation, padding, extra, min_size=4)
  n = cin // groups * k * k
  assume(n > 1 and out * out >= 12)
  rng = np.random.default_rng(seed)
  x = rng.uniform(-4, 4, (batch, cin, size, size)).astype(dtype)
  w = rng.uniform(-4, 4, (cout, cin // groups, k, k)).astype(dtype)
  s = rng.uniform(-2, 2, cout).astype(dtype)
  t = (rng.uniform(-1000, 1000, cout) if big else rng.uniform(-4, 4, cout)).astype(dtype)   # big: a dropped bias shows
  r = rng.uniform(-8, 8, (batch, cout, out, out)).astype(dtype)
  epi = epilogue(kind)
  fn = lambda x, w, s, t, r: epi(x.conv2d(w, groups=groups, stride=stride, dilation=dilation, padding=padding), s, t, r)
  report.reset()
  with env(ROCKET_FALLBACK="0"):
    try: got = run(fn, (x, w, s, t, r), "ROCKET")
    except FallbackError as e:
      if "conv:" not in str(e): reject()   # a kernel form analysis.py does not read: outside the rule's input
      raise
  (reason,) = conv_records()
  assert reason.startswith("conv (") and all(m in reason for m in marks(kind)), (kind, reason)
  ref = run(fn, (x, w, s, t, r), "CPU")
  conv64 = lambda a, b: Tensor(np.abs(a).astype(np.float64), device="CPU").conv2d(
    Tensor(np.abs(b).astype(np.float64), device="CPU"), groups=groups, stride=stride, dilation=dilation, padding=padding).numpy()
  b_rocket, b_cpu = bounds(kind, dtype, x, w, s, t, r, conv64, n)
  nm.assert_within(got, ref, b_rocket + b_cpu, f"{kind} conv {x.shape} * {w.shape} s{stride} d{dilation} p{padding} g{groups} {dtype}")

def test_epilogue_never_dropped_or_doubled():
  """The a@b + 1 class of bug: with integer data every step is exact (|values| < 2^11, products and sums exact in fp16 /
  fp32), so the fused result must equal numpy's exactly; a bias of 1000 dropped, or a residual added twice, cannot hide."""
  rng = np.random.default_rng(3)
  x = rng.integers(-2, 3, (2, 4, 6, 6)).astype(np.float32)
  w = rng.integers(-2, 3, (5, 4, 3, 3)).astype(np.float32)
  b = (1000 + np.arange(5)).astype(np.float32)
  s = np.array([2, -1, 0.5, 4, 1], np.float32)
  R = rng.integers(-50, 50, (2, 5, 6, 6)).astype(np.float32)
  acc = Tensor(x, device="CPU").conv2d(Tensor(w, device="CPU"), padding=1).numpy().astype(np.float64)   # exact: integers
  col = lambda v: v.reshape(1, -1, 1, 1)
  cases = [(lambda y, b, s, R: y + col(b), acc + col(b)), (lambda y, b, s, R: y * col(s) + col(b), acc * col(s) + col(b)),
           (lambda y, b, s, R: y + R, acc + R), (lambda y, b, s, R: (y + col(b) + R).relu(), np.maximum(acc + col(b) + R, 0)),
           (lambda y, b, s, R: (y - col(b)).relu6(), np.clip(acc - col(b), 0, 6)), (lambda y, b, s, R: y * 2 + 1, acc * 2 + 1),
           (lambda y, b, s, R: (y * col(s) + R - col(b)).relu(), np.maximum(acc * col(s) + R - col(b), 0))]
  for i, (f, want) in enumerate(cases):
    report.reset()
    with env(ROCKET_FALLBACK="0"):
      got = run(lambda x, w, b, s, R: f(x.conv2d(w, padding=1), b, s, R), (x, w, b, s, R), "ROCKET")
    assert all(r.startswith("conv (") for r in conv_records()), i
    np.testing.assert_array_equal(got, want, err_msg=f"case {i}")

# ***** what the conv datapath does not take: another path, with the reason *****

def conv_reasons(t:Tensor) -> list:
  """lower_conv's answer for each kernel of t that has a reduction."""
  lin, _ = t.linear_with_vars()
  out = []
  for k in [c.src[0] for c in lin.src if c.src[0].op is Ops.SINK]:
    nest = analysis.analyze(k)
    if any(isinstance(v, analysis.Reduce) for v in conv_rule.walk(nest.value)): out.append(conv_rule.lower_conv(nest))
  return out

@pytest.mark.parametrize("what,build,reason", [
  ("per-pixel scale", lambda x, w, r: x.conv2d(w, padding=1) * r, "scale varies with more than the output channel"),
  ("non-affine", lambda x, w, r: x.conv2d(w, padding=1).square(), "a second reduction in the epilogue"),
  ("activation", lambda x, w, r: x.conv2d(w, padding=1).sigmoid(), "to the sum"),
  ("padded residual", lambda x, w, r: x.conv2d(w, padding=1) + r[:, :, 1:-1, 1:-1].pad((1, 1, 1, 1)), "padded epilogue operand"),
  ("small plane", lambda x, w, r: x[:, :, :3, :3].conv2d(w, padding=1) + r[:, :, :3, :3], "output plane of 9 pixels")])
def test_refused_with_reason(what, build, reason):
  """Epilogues the conv datapath does not take: the conv rule says why, and another path runs the kernel (the contraction
  rule where it fuses them, else the C code; their own tests bound their values)."""
  rng = np.random.default_rng(4)
  x, w, r = (Tensor(rng.uniform(-1, 1, sh).astype(np.float32), device="ROCKET").realize() for sh in ((1, 4, 6, 6), (5, 4, 3, 3), (1, 5, 6, 6)))
  got = conv_reasons(build(x, w, r))
  assert got and all(isinstance(g, NotApplicable) and reason in g.reason for g in got), (what, got)
  report.reset()
  build(x, w, r).realize()
  recs = report.records()
  assert recs and not any(rec.engine == "npu" and rec.reason.startswith("conv (") for rec in recs), recs

def test_int8_epilogue_stays_refused():
  """int8 convolutions keep their exact int32 path: a bias after the int32 sum is not fused (the reason says why)."""
  rng = np.random.default_rng(5)
  x = Tensor(rng.integers(-5, 5, (1, 4, 6, 6)).astype(np.int8), device="ROCKET").realize()
  w = Tensor(rng.integers(-5, 5, (5, 4, 3, 3)).astype(np.int8), device="ROCKET").realize()
  got = conv_reasons(x.conv2d(w, padding=1, dtype=dtypes.int32) + 7)
  assert got and all(isinstance(g, NotApplicable) and "integer contraction with an epilogue" in g.reason for g in got), got

# ***** a ResNet basic block, and the layout's modeled time *****

def test_resnet_basic_block_convs_on_the_conv_datapath():
  """conv-BN-ReLU, conv-BN, + identity, ReLU (eval): two kernels, both the conv rule's (before: the contraction rule's im2col
  matmul tiles). tests/test_blocks.py checks each layer's values within its bound."""
  rng = np.random.default_rng(6)
  C = 16
  def bn():
    m = nn.BatchNorm(C)
    m.weight, m.bias = (Tensor(rng.uniform(a, b, C).astype(np.float32), device="ROCKET").realize() for a, b in ((0.5, 1.5), (-.5, .5)))
    m.running_mean, m.running_var = (Tensor(rng.uniform(a, b, C).astype(np.float32), device="ROCKET").realize() for a, b in ((-.5, .5), (.5, 1.5)))
    return m
  x = Tensor(rng.uniform(-1, 1, (1, C, 14, 14)).astype(np.float32), device="ROCKET").realize()
  w1, w2 = (Tensor(rng.uniform(-.2, .2, (C, C, 3, 3)).astype(np.float32), device="ROCKET").realize() for _ in range(2))
  b1, b2 = bn(), bn()
  report.reset()
  with env(ROCKET_FALLBACK="0"):
    h = b1(x.conv2d(w1, padding=1)).relu()
    (b2(h.conv2d(w2, padding=1)) + x).relu().realize()
  recs = report.records()
  assert sum(r.runs for r in recs) == 2 and all(r.engine == "npu" and r.reason.startswith("conv (direct)") for r in recs), recs
  assert any("+residual" in r.reason for r in recs) and any("+per-channel shift" in r.reason for r in recs), recs

@needs_counters
@pytest.mark.parametrize("x_shape,w_shape,groups", [((1, 64, 30, 30), (64, 64, 3, 3), 1), ((1, 16, 40, 40), (600, 16, 3, 3), 1),
                                                    ((2, 40, 20, 20), (40, 1, 3, 3), 40)])
def test_npu_seconds_counts_the_operand(x_shape, w_shape, groups):
  """npu_seconds of a conv + BN + residual layout equals the emulator's modeled time of its tasks (the EW operand's DMA
  included; the regcmd fetch left out, as tests/test_conv_rule.py checks without an epilogue), and the tasks read the
  operand bytes the layout plans."""
  from tinygrad import Device
  rng = np.random.default_rng(7)
  x, w = (Tensor(rng.uniform(-1, 1, sh).astype(np.float32), device="ROCKET").realize() for sh in (x_shape, w_shape))
  s, t = (Tensor(rng.uniform(-1, 1, w_shape[0]).astype(np.float32), device="ROCKET").realize() for _ in range(2))
  r = Tensor(rng.uniform(-1, 1, x.conv2d(w, padding=1, groups=groups).shape).astype(np.float32), device="ROCKET").realize()
  build = lambda: x.conv2d(w, padding=1, groups=groups) * s.reshape(1, -1, 1, 1) + t.reshape(1, -1, 1, 1) + r
  lin, _ = build().linear_with_vars()
  (k,) = [c.src[0] for c in lin.src if c.src[0].op is Ops.SINK]
  nest = analysis.analyze(k)
  nest.precision = "default"
  c, lay = conv_rule.match(nest)
  assert lay.ew_nbytes == conv_rule.EPILOGUE_OPERAND_BYTES
  stats = Device["ROCKET"].driver.file.stats
  n0 = len(stats.tasks)
  with env(ROCKET_FALLBACK="0"): build().realize()
  tasks = stats.tasks[n0:]
  emulated = sum(t.busy_seconds(cost.MAINLINE_CLOCK_HZ) for t in tasks) + (len(tasks) - 1) * cost.PER_TASK_OVERHEAD_S
  fetch = sum(t.dma_read["PC"] for t in tasks) / cost.DMA_BYTES_PER_S
  assert emulated - fetch <= conv_rule.npu_seconds(lay) <= emulated, (conv_rule.npu_seconds(lay), emulated, fetch)
  # every task reads its operand cube once (MRDMA the even surfaces, ERDMA the odd ones)
  operand = sum(t.dma_read.get("MRDMA", 0) + t.dma_read.get("ERDMA", 0) for t in tasks)
  assert operand == conv_rule.ew_bytes(lay.spec, lay.kernels_per_task, lay.ew_nbytes) * lay.images > 0, operand

# ***** leaky ReLU on the conv datapath *****

def leaky_bounds(u_abs, e_u, e_c, a:float):
  """ROCKET's + the CPU's bound of where(u < 0, a*u, u) given |u| <= u_abs and each side's bound on u (e_u: fp16
  operands, fp32 sum; e_c: the CPU's fp32 conv). ROCKET (rules/conv.py, LEAKY_OPERAND_BYTES; rules/contraction.py
  _leaky_tasks): u in fp32, then max/min(u, fl32(fp16(a) u)): |fp16(a)| e_u + |fp16(a) - a| |u| + u32 |fp16(a)| (|u| +
  e_u) on the negative branch. The CPU: fl32(fl32(a) u), the same with a rounded to fp32. Both branches summed (sound
  for either)."""
  a16, a32 = float(np.float16(a)), float(np.float32(a))
  rocket = e_u * (1 + abs(a16)) + abs(a16 - a) * u_abs + nm.U32 * abs(a16) * (u_abs + e_u)
  cpu = e_c * (1 + abs(a32)) + abs(a32 - a) * u_abs + nm.U32 * abs(a32) * (u_abs + e_c)
  return rocket + cpu

@given(cin=st.integers(1, 12), cout=st.integers(1, 20), k=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 2),
       extra=st.integers(0, 6), depthwise=st.booleans(), scaled=st.booleans(), slope=st.sampled_from([0.1, 0.01, 0.2, 0.3, 1.5, -0.25]),
       seed=st.integers(0, 2**16))
def test_conv_leaky_on_npu(cin, cout, k, stride, padding, extra, depthwise, scaled, slope, seed):
  """x.conv2d(w).leaky_relu(a) (and with a per-kernel scale folded into the weights) as the conv rule's two tasks per band."""
  groups, cout = (cin, cin) if depthwise else (1, cout)
  size = max(4, padding + 1, k - 2 * padding) + extra
  out = (size + 2 * padding - k) // stride + 1
  n = cin // groups * k * k
  assume(n > 1 and out * out >= 12 and not k < stride)
  rng = np.random.default_rng(seed)
  x = rng.uniform(-4, 4, (1, cin, size, size)).astype(np.float32)
  w = rng.uniform(-2, 2, (cout, cin // groups, k, k)).astype(np.float32)
  s = rng.uniform(-2, 2, cout).astype(np.float32)
  def fn(x, w, s):
    y = x.conv2d(w, groups=groups, stride=stride, padding=padding)
    return (y * s.reshape(1, -1, 1, 1) if scaled else y).leaky_relu(slope)
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = run(fn, (x, w, s), "ROCKET")
  (reason,) = conv_records()
  assert reason.startswith("conv (") and f"*u), two tasks per band)" in reason and (" +scale (weights)" in reason) == scaled, reason
  ref = run(fn, (x, w, s), "CPU")
  sc = np.abs(s.astype(np.float64)).reshape(1, -1, 1, 1) if scaled else 1.0
  ws = w.astype(np.float64) * (s.astype(np.float64).reshape(-1, 1, 1, 1) if scaled else 1.0)
  conv64 = lambda a, b: Tensor(np.abs(a).astype(np.float64), device="CPU").conv2d(Tensor(np.abs(b).astype(np.float64), device="CPU"),
                                                                                   groups=groups, stride=stride, padding=padding).numpy()
  S = conv64(x, ws)                                          # >= |u|, and the weights as packed: fl16(w*s)
  amax = float(np.abs(x).max() + np.abs(ws).max())
  e_u = nm.bound_dot(nm.Precision(nm.U16, nm.ETA16, nm.U32, 0.0, 0.0), S, n, amax)
  e_c = nm.gamma(max(n - 1, 0), nm.U32) * conv64(x, w) * sc + (nm.U32 * S if scaled else 0)   # the fp32 conv, then * s
  nm.assert_within(got, ref, leaky_bounds(S + e_u, e_u, e_c, slope), f"leaky({slope}) conv {x.shape} * {w.shape} s{stride} p{padding}")

def test_leaky_after_a_shift_is_the_contraction_rules():
  """conv + bias + leaky (YOLO's conv + BN + leaky): the shift has no stage in the conv rule's recomputing task, so the
  conv rule says so and the contraction rule runs it on the NPU."""
  rng = np.random.default_rng(5)
  x, w, b = rng.standard_normal((1, 3, 8, 8)).astype(np.float32), rng.standard_normal((8, 3, 3, 3)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
  fn = lambda x, w, b: x.conv2d(w, b, padding=1).leaky_relu(0.1)
  (m,) = conv_reasons(fn(*(Tensor.empty(*a.shape, device="ROCKET") for a in (x, w, b))))
  assert isinstance(m, NotApplicable) and "a leaky ReLU after a shifted epilogue" in m.reason, m
  report.reset()
  with env(ROCKET_FALLBACK="0"): run(fn, (x, w, b), "ROCKET")
  (reason,) = conv_records()
  assert reason.startswith("contraction") and "+leaky" in reason, reason
