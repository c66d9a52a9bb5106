"""Output selects (analysis.Select): a contraction written only at some output positions, another value elsewhere.

The three real-model forms: a conv whose output tinygrad writes already padded with -inf (ResNet's stem before its
max pool; here written with .pad(value=-inf), the same kernel), causal attention's scores with the mask added
(qk + where(j <= i, 0, -inf), as scaled_dot_product_attention(is_causal=True) builds it) and a channel concatenation
of a conv with an elementwise value of another buffer (YOLO's neck); and attention with a stored bool padding mask
(scaled_dot_product_attention(attn_mask=m): a select the mask's data decides, read at each call). Strict mode (ROCKET_FALLBACK=0) proves the NPU
ran the kernel; its summary's "+output select" that the select was read.

Bounds (numerics.py model): the contraction's positions as the contraction alone (bound_dot on both devices, the
bias one more product with 1, ReLU and leaky ReLU 1-Lipschitz; the leaky slope's fp16 rounding as
rules/contraction.py _leaky_tasks states it). A constant written elsewhere (-inf, 0, 1.5) is exact: compared bit for
bit. A value of loads written elsewhere is evaluated by the CPU in float64 and rounded once to float32 (ROCKET),
and by tinygrad's C code in float32 (CPU): the running error bounds of test_conv_prologue.R, with exp2's own error
EXP2F_ULPS.
"""
from __future__ import annotations
import numpy as np
import pytest
from hypothesis import given, assume, strategies as st
from tinygrad import Tensor, dtypes
from tinygrad.uop.ops import Ops
from tinygrad_rocket import report
from tinygrad_rocket.analysis import analyze, NotAnalyzable
from tinygrad_rocket.config import FallbackError
import numerics as nm
from helpers import env
from test_conv_prologue import R, const, exact
from numerics import conv64

U64 = 2.0 ** -53
# glibc's exp2f (what tinygrad's C code calls for EXP2 on the CPU device): at most 1 ulp from the exact value (glibc
# manual, "Known Maximum Errors in Math Functions": exp2f 1 ulp on x86_64 and aarch64)
EXP2F_ULPS = 1

def run(fn, arrays, device:str) -> np.ndarray:
  ts = [Tensor(a, device=device).realize() for a in arrays]   # realized first: only the kernel under test runs
  return fn(*ts).numpy()

def on_npu(fn, arrays) -> tuple[np.ndarray, str]:
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = run(fn, arrays, "ROCKET")
  recs = report.records()
  assert len(recs) == 1 and recs[0].engine == "npu", [(r.name, r.engine, r.reason) for r in recs]
  assert "+output select" in recs[0].reason, recs[0].reason
  return got, recs[0].reason

def assert_filled(got:np.ndarray, ref:np.ndarray, mask:np.ndarray, what:str):
  """The positions the select fills with a constant: bit for bit (-inf equals -inf)."""
  assert np.array_equal(got[mask].view(np.uint32), ref[mask].view(np.uint32)), f"{what}: filled positions differ"

def dot_bound(S:np.ndarray, n:int, amax:float) -> np.ndarray:
  return nm.bound_dot(nm.rocket("float32"), S, n, amax) + nm.bound_dot(nm.cpu("float32"), S, n, amax)

# ***** a conv output padded with a constant (ResNet's stem before its max pool) *****

def padded_conv(x, w, b, stride:int, padding:int, pads:tuple[int, int, int, int], fill:float) -> tuple[np.ndarray, np.ndarray, str]:
  fn = lambda X, W, B: (X.conv2d(W, stride=stride, padding=padding) + B.reshape(1, -1, 1, 1)).relu().pad(pads, value=fill)
  got, reason = on_npu(fn, (x, w, b))
  ref = run(fn, (x, w, b), "CPU")
  xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  S = conv64(np.abs(xp), np.abs(w), stride=stride) + np.abs(b.astype(np.float64)).reshape(1, -1, 1, 1)
  n = w.shape[1] * w.shape[2] * w.shape[3] + 1
  inner = np.zeros(ref.shape, bool)
  l, r, t, btm = pads
  inner[:, :, t:ref.shape[2] - btm, l:ref.shape[3] - r] = True
  bound = np.full(ref.shape, 0.0)
  bound[inner] = dot_bound(S, n, float(np.abs(x).max() + np.abs(w).max() + np.abs(b).max() + 1)).reshape(-1)
  assert_filled(got, ref, ~inner, "padding")
  nm.assert_within(np.where(inner, got, 0), np.where(inner, ref, 0), bound, "conv interior")
  return got, ref, reason

def test_stem_padded_output():
  """ResNet-18's stem shape at a small width: 7x7 stride 2 padding 3 + bias + ReLU, written padded by 1 with -inf."""
  rng = np.random.default_rng(0)
  x, w, b = rng.standard_normal((1, 3, 32, 32)), rng.standard_normal((16, 3, 7, 7)), rng.standard_normal(16)
  _, _, reason = padded_conv(*(a.astype(np.float32) for a in (x, w, b)), 2, 3, (1, 1, 1, 1), float("-inf"))
  assert reason.startswith("conv ("), reason   # the conv datapath, computing the 16x16 interior only
  assert "-> 16x16" in reason, reason

@given(cin=st.integers(1, 4), cout=st.integers(1, 18), k=st.integers(1, 3), padding=st.integers(0, 2),
       size=st.integers(4, 9), pads=st.tuples(*[st.integers(0, 2)] * 4), fill=st.sampled_from([float("-inf"), 0.0, 1.5]),
       seed=st.integers(0, 2**16))
def test_padded_output_shapes(cin, cout, k, padding, size, pads, fill, seed):
  """Stride 1 (strided: test_padded_output_strided): any paddings of the conv and of its output, fill values."""
  stride = 1
  assume(any(pads) and cin * k * k > 1 and (size + 2 * padding - k) // stride + 1 >= 1)   # (one product: no reduction)
  rng = np.random.default_rng(seed)
  x = rng.uniform(-2, 2, (1, cin, size, size)).astype(np.float32)
  w = rng.uniform(-1, 1, (cout, cin, k, k)).astype(np.float32)
  b = rng.uniform(-1, 1, cout).astype(np.float32)
  padded_conv(x, w, b, stride, padding, pads, fill)

@pytest.mark.parametrize("size,k,padding,pads", [(16, 7, 3, (1, 1, 1, 1)), (12, 3, 1, (1, 1, 1, 1))])
def test_padded_output_strided(size, k, padding, pads):
  """Stride 2 (the stem's). Other strided shapes (e.g. 5x5 or 9x9, k 3, padding 1, the output padded asymmetrically) are refused:
  tinygrad writes the input's padding predicate there through a % over several periods of the padded output's rows,
  which the padding analysis does not read (the kernel's reason says so)."""
  rng = np.random.default_rng(size)
  x, w, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in ((1, 3, size, size), (8, 3, k, k), (8,)))
  padded_conv(x, w, b, 2, padding, pads, float("-inf"))

# ***** causal attention's masked scores *****

def causal_scores(heads:int, L:int, d:int, seed:int):
  """qk / sqrt(d) + where(j <= i, 0, -inf) as scaled_dot_product_attention(is_causal=True) writes it (d a power of 4:
  the scale is a power of two, exact on both devices)."""
  rng = np.random.default_rng(seed)
  q, k = (rng.standard_normal((1, heads, L, d)).astype(np.float32) for _ in range(2))
  def fn(Q, K):
    qk = Q @ K.transpose(-1, -2) / float(np.sqrt(d))
    return qk + qk.const_like(True, dtypes.bool).tril().where(0, float("-inf"))
  got, reason = on_npu(fn, (q, k))
  ref = run(fn, (q, k), "CPU")
  s = 1 / np.sqrt(d)
  S = np.abs(q.astype(np.float64)) @ np.abs(k.astype(np.float64)).swapaxes(-1, -2) * s
  keep = np.tril(np.ones((L, L), bool))[None, None]
  keep = np.broadcast_to(keep, ref.shape)
  assert_filled(got, ref, ~keep, "masked scores")
  nm.assert_within(np.where(keep, got, 0), np.where(keep, ref, 0), np.where(keep, dot_bound(S, d, float(np.abs(q).max() + np.abs(k).max() * s)), 0), "scores")
  return reason

def test_causal_mask():
  assert causal_scores(2, 8, 16, 0).startswith("contraction "), "the contraction rule's matmul tiles"

@given(heads=st.integers(1, 3), L=st.integers(2, 20), d=st.sampled_from([4, 16, 64]), seed=st.integers(0, 2**16))
def test_causal_shapes(heads, L, d, seed):
  causal_scores(heads, L, d, seed)

# ***** a channel concatenation (YOLO's neck) *****

def exp2_r(x:R, ulps:int) -> R:
  """2^x of a value within x.e, with the function's own error of `ulps` units of the format."""
  v = np.exp2(x.v)
  e = v * (np.exp2(x.e) - 1) + ulps * 2 * x.u * (v * np.exp2(x.e))
  return R(v, e, x.u)

def silu(x:R, ulps:int) -> R:
  """tinygrad's silu as its kernel writes it: x * 1/(1 + exp2(x * -log2(e)))."""
  return x * (const(1.0, x.u) + exp2_r(x * const(-1.4426950408889634, x.u), ulps)).recip()

def test_concat_with_computed_half():
  """conv + leaky ReLU on channels [0, 4), silu of another buffer on [4, 8): the conv on the NPU, silu by the CPU."""
  rng = np.random.default_rng(1)
  y, w, up = rng.standard_normal((1, 8, 6, 6)), rng.standard_normal((4, 8, 1, 1)), rng.standard_normal((1, 4, 6, 6))
  y, w, up = (a.astype(np.float32) for a in (y, w, up))
  fn = lambda Y, W, UP: Y.conv2d(W).leaky_relu(0.1).cat(UP.silu(), dim=1)
  got, reason = on_npu(fn, (y, w, up))
  assert "computed from loads" in reason, reason
  ref = run(fn, (y, w, up), "CPU")
  # the conv half: bound_dot of u on both devices, then on the negative branch |fp16(a)| e_u + |fp16(a) - a| |u| + u32 |a u|
  S = conv64(np.abs(y), np.abs(w))
  e_u = dot_bound(S, 8, float(np.abs(y).max() + np.abs(w).max()))
  a, a16 = 0.1, float(np.float16(0.1))
  u = conv64(y, w)
  neg = abs(a16) * e_u + abs(a16 - a) * np.abs(u) + 2 * nm.U32 * abs(a) * np.abs(u)
  nm.assert_within(got[:, :4], ref[:, :4], np.maximum(e_u, neg), "conv half")
  # the other half: float64 then one rounding to float32 (ROCKET), float32 throughout with exp2f's error (CPU)
  r64, r32 = silu(exact(up, 2 * U64), 0), silu(exact(up, nm.U32 + U64), EXP2F_ULPS)
  nm.assert_within(got[:, 4:], ref[:, 4:], r64.e + nm.U32 * (np.abs(r64.v) + r64.e) + r32.e, "silu half")

def test_yolo_concat_sigmoid_after_select():
  """sigmoid after the concatenation applies to both halves: the conv half with its fused sigmoid (the contraction
  rule's lookup table), the other by the CPU. Its numerics are the table's (test_contraction_activation); here: runs on
  the NPU, and the CPU-written half within the float64-vs-float32 bound."""
  rng = np.random.default_rng(2)
  y, w, up = (rng.standard_normal(s).astype(np.float32) for s in ((1, 8, 6, 6), (4, 8, 1, 1), (1, 4, 6, 6)))
  fn = lambda Y, W, UP: Y.conv2d(W).cat(UP.silu(), dim=1).sigmoid()
  got, reason = on_npu(fn, (y, w, up))
  assert "lut(" in reason, reason
  ref = run(fn, (y, w, up), "CPU")
  sig = lambda x, ulps: (const(1.0, x.u) + exp2_r(x * const(-1.4426950408889634, x.u), ulps)).recip()
  r64, r32 = sig(silu(exact(up, 2 * U64), 0), 0), sig(silu(exact(up, nm.U32 + U64), EXP2F_ULPS), EXP2F_ULPS)
  nm.assert_within(got[:, 4:], ref[:, 4:], r64.e + nm.U32 * (np.abs(r64.v) + r64.e) + r32.e, "sigmoid(silu) half")

# ***** what stays refused *****

def kernels(t:Tensor) -> list:
  lin, _ = t.linear_with_vars()
  return [c.src[0] for c in lin.src if c.src[0].op is Ops.SINK]

def test_reduce_range_where_is_not_a_select():
  """A where over a reduce loop (tril(A) @ B: k <= i inside the sum) is the operand's padding (zero fill when
  packing), never an output select."""
  rng = np.random.default_rng(3)
  a, b = (rng.standard_normal((8, 8)).astype(np.float32) for _ in range(2))
  (k,) = kernels(Tensor(a, device="ROCKET").realize().tril() @ Tensor(b, device="ROCKET").realize())
  assert analyze(k).select is None
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = run(lambda A, B: A.tril() @ B, (a, b), "ROCKET")
  assert all("output select" not in r.reason for r in report.records())
  ta = np.tril(a)
  nm.assert_within(got, run(lambda A, B: A.tril() @ B, (a, b), "CPU"),
                   nm.bound_matmul(nm.rocket("float32"), ta, b) + nm.bound_matmul(nm.cpu("float32"), ta, b), "tril(A) @ B")

def test_non_affine_select_refused():
  """A mask over output positions through i % 3 (several periods: not affine) is refused with the reason."""
  rng = np.random.default_rng(4)
  fn = lambda Q, K: (lambda qk: qk + (Tensor.arange(8) % 3 == 0).reshape(1, 8).expand(8, 8).where(0, float("-inf")))(Q @ K.T)
  q, k = (rng.standard_normal((8, 16)).astype(np.float32) for _ in range(2))
  (kern,) = [x for x in kernels(fn(*(Tensor(a, device="ROCKET").realize() for a in (q, k)))) if any(u.op is Ops.REDUCE for u in x.toposort())]
  with pytest.raises(NotAnalyzable): analyze(kern)
  report.reset()
  with env(ROCKET_FALLBACK="0"), pytest.raises(FallbackError, match="not affine|period"): run(fn, (q, k), "ROCKET")

def test_other_reading_the_sum_refused():
  """The value outside the select reads the reduction (which only the NPU computes): s + where(j <= i, s, 0) and
  where(j <= i, s, 2 s) are refused with a reason, never split."""
  rng = np.random.default_rng(5)
  q, k = (Tensor(rng.standard_normal((8, 16)).astype(np.float32), device="ROCKET").realize() for _ in range(2))
  s = q @ k.T
  mask = s.const_like(True, dtypes.bool).tril()
  (kern,) = kernels(s + mask.where(s, 0))
  with pytest.raises(NotAnalyzable, match="reads the reduction"): analyze(kern)
  (kern,) = kernels(mask.where(s, s * 2))
  with pytest.raises(NotAnalyzable, match="depends on the output position"): analyze(kern)

# ***** attention with a stored bool padding mask *****
# scaled_dot_product_attention(attn_mask=m), m bool (BERT-style padding masks, batched sequences of different lengths):
# tinygrad writes its scores as s*scale + where(m, 0, -inf), a select decided by the mask's data. The NPU computes the
# scores everywhere; the CPU writes -inf where the mask, read at each call, is False (Copy.where). Bounds: the scores'
# positions as causal_scores (bound_dot on both devices, the scale a power of two: exact), the masked ones bit for bit;
# the whole attention as test_blocks_on_npu.test_attention_block's bound for the stand-in scores the NPU's softmax
# computes with (test_nonfinite_operands.standin; a masked score's probability is exactly 0 on the CPU).
from test_blocks_on_npu import all_npu, softmax_bound, table_error   # noqa: E402
from test_nonfinite_operands import standin   # noqa: E402
from tinygrad_rocket.device import NONFINITE_OPERAND_REASON   # noqa: E402

U16, U32, ETA16 = nm.U16, nm.U32, nm.ETA16
HEAD = 16   # head size: the scale 1/sqrt(16) is a power of two, exact on both devices
MASK_SAYS = "where a stored bool mask says"

def padding_mask(rng, B:int, rows:int, L:int) -> np.ndarray:
  """A bool mask (B, 1, rows, L) with at least one True per row (rows 1: per-sequence key lengths' padding mask)."""
  m = rng.random((B, 1, rows, L)) < 0.6
  np.put_along_axis(m, rng.integers(0, L, (B, 1, rows, 1)), True, -1)
  return m

def qkv(rng, B:int, H:int, L:int) -> list[np.ndarray]: return [rng.standard_normal((B, H, L, HEAD)).astype(np.float32) for _ in range(3)]

def masked_scores(fn, q:np.ndarray, k:np.ndarray, m:np.ndarray, fill:float) -> np.ndarray:
  """fn(Q, K, M): the scores kernel alone, on the NPU; `fill` bit for bit where m is False, the scores elsewhere."""
  got, reason = on_npu(fn, (q, k, m))
  assert MASK_SAYS in reason and reason.startswith("contraction "), reason
  ref = run(fn, (q, k, m), "CPU")
  keep = np.broadcast_to(m, ref.shape)
  assert np.array_equal(got[~keep].view(np.uint32), np.full((~keep).sum(), fill, np.float32).view(np.uint32)), "masked scores"
  assert_filled(got, ref, ~keep, "masked scores")
  s = 1 / np.sqrt(HEAD)
  S = np.abs(q.astype(np.float64)) @ np.abs(k.astype(np.float64)).swapaxes(-1, -2) * s
  nm.assert_within(np.where(keep, got, 0), np.where(keep, ref, 0), np.where(keep, dot_bound(S, HEAD, float(np.abs(q).max() + np.abs(k).max() * s)), 0), "scores")
  return got

def sdpa_scores(Q, K, M): return Q @ K.transpose(-1, -2) / float(np.sqrt(HEAD)) + M.where(0, float("-inf"))

@pytest.mark.parametrize("rows", [1, 6])
def test_sdpa_scores_with_bool_mask(rows):
  rng = np.random.default_rng(rows)
  q, k, _ = qkv(rng, 2, 2, 6)
  masked_scores(sdpa_scores, q, k, padding_mask(rng, 2, rows, 6), float("-inf"))

def test_masked_fill_forms():
  """s.masked_fill(~m, -inf) (a select on NOT m), m.where(s, -inf) and a finite constant (-1e4, HF's large negative)."""
  rng = np.random.default_rng(7)
  q, k, _ = qkv(rng, 2, 2, 5)
  m = padding_mask(rng, 2, 5, 5)
  scores = lambda Q, K: Q @ K.transpose(-1, -2) / float(np.sqrt(HEAD))
  masked_scores(lambda Q, K, M: scores(Q, K).masked_fill(M.logical_not(), float("-inf")), q, k, m, float("-inf"))
  masked_scores(lambda Q, K, M: M.where(scores(Q, K), float("-inf")), q, k, m, float("-inf"))
  masked_scores(lambda Q, K, M: scores(Q, K).masked_fill(~M, -1e4), q, k, m, np.float32(-1e4))

def test_mask_read_at_each_call():
  """One compiled kernel, two masks: each call writes the fill where its own mask says (the points are data)."""
  rng = np.random.default_rng(8)
  q, k, _ = qkv(rng, 2, 2, 8)
  for _ in range(2): masked_scores(sdpa_scores, q, k, padding_mask(rng, 2, 1, 8), float("-inf"))

def attention_bound(q:np.ndarray, k:np.ndarray, v:np.ndarray, keep:np.ndarray, exp_error:float) -> np.ndarray:
  """test_blocks_on_npu.test_attention_block's bound with the masked scores at -inf (the softmax's stand-in for them);
  exp_error: the exp2 table's (the program states it)."""
  qd, kd, vd = (t.astype(np.float64) for t in (q, k, v))
  scale = 1 / np.sqrt(HEAD)
  s = qd @ kd.swapaxes(-1, -2) * scale
  ds = np.where(keep, nm.bound_matmul(nm.rocket("float32"), qd, kd.swapaxes(-1, -2)) * scale + U16 * np.abs(s), 0)
  p, e_p = softmax_bound(standin(np.where(keep, s, -np.inf)), exp_error)
  dmax = ds.max(-1, keepdims=True)
  e_p = e_p * np.exp(2 * dmax) + p * (np.exp(2 * dmax) - 1)
  e_p = e_p + U16 * (p + e_p) + ETA16                                     # narrowed to fp16 in A
  e_v = U16 * np.abs(vd) + ETA16
  S = (p + e_p) @ (np.abs(vd) + e_v)
  L = k.shape[-2]
  bound = e_p @ np.abs(vd) + p @ e_v + e_p @ e_v + nm.gamma(L - 1, U32) * S + U32 * S
  return bound + nm.gamma(L + 8, U32) * (np.abs(p) @ np.abs(vd))

def masked_attention(q:np.ndarray, k:np.ndarray, v:np.ndarray, m:np.ndarray) -> None:
  """The whole attention with a padding mask, every kernel on the NPU, within attention_bound."""
  Q, K, V, M = (Tensor(a, device="ROCKET").realize() for a in (q, k, v, m))
  r, summaries = all_npu(lambda: Q.scaled_dot_product_attention(K, V, attn_mask=M).numpy())
  assert MASK_SAYS in summaries[0], summaries
  c = Tensor(q, device="CPU").scaled_dot_product_attention(*(Tensor(a, device="CPU") for a in (k, v)), attn_mask=Tensor(m, device="CPU")).numpy()
  keep = np.broadcast_to(m, q.shape[:2] + (q.shape[2], k.shape[2]))
  nm.assert_within(r, c, attention_bound(q, k, v, keep, table_error("exp2", summaries)), "masked attention")

@pytest.mark.parametrize("rows", [1, 12])
def test_sdpa_with_bool_mask_on_the_npu(rows):
  rng = np.random.default_rng(10 + rows)
  masked_attention(*qkv(rng, 2, 2, 12), padding_mask(rng, 2, rows, 12))

@given(L=st.integers(4, 16), rows=st.sampled_from(["key", "full"]), seed=st.integers(0, 2**16))
def test_sdpa_mask_shapes(L, rows, seed):
  rng = np.random.default_rng(seed)
  masked_attention(*qkv(rng, 2, 2, L), padding_mask(rng, 2, 1 if rows == "key" else L, L))

def test_fully_masked_row_runs_the_c_code():
  """A query row with every key masked: its scores are all -inf (the scores kernel on the NPU, the fill), its softmax
  0/0 = NaN on the CPU; the kernels that read the row's -inf max run the C code (NONFINITE_OPERAND_REASON, the whole
  call), and the result is the CPU's: NaN on that row, the other rows within attention_bound."""
  rng = np.random.default_rng(12)
  L = 8
  q, k, v = qkv(rng, 2, 2, L)
  m = padding_mask(rng, 2, L, L)
  m[1, 0, 3] = False
  Q, K, V, M = (Tensor(a, device="ROCKET").realize() for a in (q, k, v, m))
  report.reset()
  r = Q.scaled_dot_product_attention(K, V, attn_mask=M).numpy()
  recs = report.records()
  assert recs[0].engine == "npu" and MASK_SAYS in recs[0].reason, recs
  assert NONFINITE_OPERAND_REASON in [x.reason for x in recs if x.engine == "fallback"], recs
  c = Tensor(q, device="CPU").scaled_dot_product_attention(*(Tensor(a, device="CPU") for a in (k, v)), attn_mask=Tensor(m, device="CPU")).numpy()
  dead = np.zeros(r.shape[:3], bool)
  dead[1, :, 3] = True
  assert np.isnan(r[dead]).all() and np.isnan(c[dead]).all() and not np.isnan(r[~dead]).any()
  assert recs[2:] and all(x.engine == "fallback" for x in recs[2:]), recs   # the softmax's sum and softmax @ V: the C code
  # the bound of attention_bound with no table: the softmax ran in float32 (exp2f within EXP2F_ULPS ulps of fp32), far
  # inside the fp16 roundings softmax_bound carries for the NPU's softmax
  keep = np.broadcast_to(m, (2, 2, L, L)) | dead[..., None]   # (the dead row's bound is not used)
  nm.assert_within(r[~dead], c[~dead], attention_bound(q, k, v, keep, 0.0)[~dead], "attention, other rows")

def test_mask_in_the_reduction_is_not_a_select():
  """A bool mask indexed by a reduce loop (where(m, a, 0) @ b: inside the sum) is the operand's (packed with it),
  never an output select; with -inf in the operand the kernel is refused with the reason."""
  rng = np.random.default_rng(13)
  a, b = (rng.standard_normal((8, 16)).astype(np.float32) for _ in range(2))
  m = rng.random((8, 16)) < 0.6
  A, B, M = (Tensor(x, device="ROCKET").realize() for x in (a, b, m))
  (kern,) = kernels(M.where(A, 0) @ B.T)
  assert analyze(kern).select is None
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = run(lambda A, B, M: M.where(A, 0) @ B.T, (a, b, m), "ROCKET")
  assert all("output select" not in r.reason for r in report.records())
  ta = np.where(m, a, 0)
  nm.assert_within(got, run(lambda A, B, M: M.where(A, 0) @ B.T, (a, b, m), "CPU"),
                   nm.bound_matmul(nm.rocket("float32"), ta, b.T) + nm.bound_matmul(nm.cpu("float32"), ta, b.T), "where(m, A, 0) @ B")
  with env(ROCKET_FALLBACK="0"), pytest.raises(FallbackError, match="-inf is not a finite fp16 value"):
    run(lambda A, B, M: M.where(A, float("-inf")) @ B.T, (a, b, m), "ROCKET")

@pytest.mark.parametrize("mask", ["int32", "float32"])
def test_non_bool_mask_refused(mask):
  """A mask stored as int or float, made a condition in the kernel (m != 0): refused with the reason, and correct."""
  rng = np.random.default_rng(14)
  q, k, _ = qkv(rng, 1, 2, 6)
  m = (padding_mask(rng, 1, 1, 6)).astype(mask)
  fn = lambda Q, K, M: (M != 0).where(Q @ K.transpose(-1, -2), float("-inf"))
  (kern,) = kernels(fn(*(Tensor(x, device="ROCKET").realize() for x in (q, k, m))))
  with pytest.raises(NotAnalyzable, match="not a stored bool"): analyze(kern)
  with env(ROCKET_FALLBACK="0"), pytest.raises(FallbackError, match="not a stored bool"): run(fn, (q, k, m), "ROCKET")
  got, ref = run(fn, (q, k, m), "ROCKET"), run(fn, (q, k, m), "CPU")
  keep = np.broadcast_to(m != 0, ref.shape)
  assert_filled(got, ref, ~keep, "masked scores")
  S = np.abs(q.astype(np.float64)) @ np.abs(k.astype(np.float64)).swapaxes(-1, -2)
  c_code = nm.bound_dot(nm.cpu("float32"), S, HEAD, 0.0)   # tinygrad's C code on both devices
  nm.assert_within(np.where(keep, got, 0), np.where(keep, ref, 0), c_code + c_code, "C code scores")

def test_mask_of_stored_bools():
  """A mask combined in the kernel from stored bools (padding & a stored causal mask, a XOR, an OR of a NOT): the CPU
  evaluates it at each call; the scores kernel on the NPU, the fill bit for bit."""
  rng = np.random.default_rng(15)
  L = 7
  q, k, _ = qkv(rng, 2, 2, L)
  m, causal = padding_mask(rng, 2, 1, L), np.tril(np.ones((L, L), bool))
  scores = lambda Q, K: Q @ K.transpose(-1, -2) / float(np.sqrt(HEAD))
  for name, fn, keep in [("and", lambda M, C: M & C, m & causal), ("xor", lambda M, C: M ^ C, m ^ causal),
                         ("or not", lambda M, C: M | C.logical_not(), m | ~causal)]:
    got, reason = on_npu(lambda Q, K, M, C: scores(Q, K) + fn(M, C).where(0, float("-inf")), (q, k, m, causal))
    assert MASK_SAYS in reason, (name, reason)
    keep = np.broadcast_to(keep, got.shape)
    assert np.isneginf(got[~keep]).all() and np.isfinite(got[keep]).all(), name
    ref = run(lambda Q, K, M, C: scores(Q, K) + fn(M, C).where(0, float("-inf")), (q, k, m, causal), "CPU")
    S = np.abs(q.astype(np.float64)) @ np.abs(k.astype(np.float64)).swapaxes(-1, -2) / np.sqrt(HEAD)
    nm.assert_within(np.where(keep, got, 0), np.where(keep, ref, 0), np.where(keep, dot_bound(S, HEAD, float(np.abs(q).max() + np.abs(k).max() / np.sqrt(HEAD))), 0), name)
