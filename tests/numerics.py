"""Error bounds for ROCKET results, derived from the numerics in DESIGN.md (never picked to make a test pass).

Model of one computation (DESIGN.md "Numerics"):
  * operands are rounded to the NPU's operand format: for float32 tensors fp16 (unit roundoff u_in = 2^-11, and an
    absolute error eta_in = 2^-25 = half the fp16 subnormal spacing, for values below fp16's normal range);
    float16 tensors are already fp16 (exact);
  * products of two fp16 values are exact in fp32 (11+11 significand bits <= 24), and sums accumulate in fp32
    (u_acc = 2^-24): an n-term sum has error <= gamma(n-1) * sum|terms|, gamma(n) = n*u/(1-n*u) (Higham, Thm 3.1);
  * the result is rounded once to the output dtype (u_out: 2^-24 fp32, 2^-11 fp16, with eta_out for fp16 subnormals).
tinygrad's CPU device computes in float32 (accumulating float16 reductions in float32 too, checked on tinygrad 0.14),
so it is the same model with exact operands. A test compares ROCKET with the CPU device and asserts
|rocket - cpu| <= bound(ROCKET) + bound(CPU): both are within their bound of the exact result.
"""
from __future__ import annotations
from dataclasses import dataclass
import numpy as np

U16, ETA16, U32 = 2.0**-11, 2.0**-25, 2.0**-24

@dataclass(frozen=True)
class Precision:
  u_in: float    # relative rounding of each operand
  eta_in: float  # absolute rounding of each operand (subnormal range)
  u_acc: float   # unit roundoff of the accumulator
  u_out: float   # rounding of the stored result
  eta_out: float

def gamma(n:int, u:float) -> float:
  assert n*u < 1, "accumulation too long for a gamma bound"
  return n*u / (1 - n*u)

def rocket(dtype:str) -> Precision:
  """ROCKET's default numerics (ROCKET_PRECISION unset)."""
  if dtype == "float32": return Precision(U16, ETA16, U32, U32, 0.0)
  if dtype == "float16": return Precision(0.0, 0.0, U32, U16, ETA16)
  raise ValueError(dtype)

def cpu(dtype:str) -> Precision:
  if dtype == "float32": return Precision(0.0, 0.0, U32, U32, 0.0)
  if dtype == "float16": return Precision(0.0, 0.0, U32, U16, ETA16)
  raise ValueError(dtype)

def _f64(*xs): return [np.asarray(x, dtype=np.float64) for x in xs]

def _out(p:Precision, exact_abs): return p.u_out * exact_abs + p.eta_out

def bound_add(p:Precision, a, b):
  """a + b (and a - b): both operands rounded, one fp32 add, one output rounding."""
  a, b = _f64(a, b)
  s = np.abs(a) + np.abs(b)
  err_in = p.u_in * s + 2*p.eta_in
  return (1 + p.u_acc) * err_in + p.u_acc * s + _out(p, s + err_in)

def bound_mul(p:Precision, a, b):
  a, b = _f64(a, b)
  ea, eb = p.u_in*np.abs(a) + p.eta_in, p.u_in*np.abs(b) + p.eta_in
  err_in = ea*np.abs(b) + eb*np.abs(a) + ea*eb
  m = np.abs(a*b) + err_in
  return err_in + p.u_acc*m + _out(p, m)

def bound_max(p:Precision, a, b):
  """max/min select one of the rounded operands: only operand and output rounding."""
  a, b = _f64(a, b)
  m = np.maximum(np.abs(a), np.abs(b))
  return p.u_in*m + p.eta_in + _out(p, m)

def bound_dot(p:Precision, S, n:int, amax:float):
  """A sum of n products x_i*y_i (matmul, conv) given S = sum_i |x_i|*|y_i| and amax >= max|x| + max|y|.
  Rounded operands: x^ = x(1+d) + e, |d| <= u_in, |e| <= eta_in, so
    |x^y^ - xy| <= (2u_in + u_in^2)|x||y| + eta_in(1+u_in)(|x|+|y|) + eta_in^2,
  the products are exact in fp32, the n-term fp32 sum adds gamma(n-1) * sum|x^y^|, and the result is rounded once."""
  S = np.asarray(S, dtype=np.float64)
  u, eta = p.u_in, p.eta_in
  e_in = (2*u + u*u)*S + n*(eta*(1+u)*amax + eta*eta)
  e_acc = gamma(max(n-1, 0), p.u_acc) * (S*(1+u)**2 + n*(eta*(1+u)*amax + eta*eta))
  return e_in + e_acc + _out(p, S + e_in + e_acc)

def bound_dot_chunked(p:Precision, S, n:int, amax:float, chunk:int, chunks:int):
  """bound_dot for a sum of n products split over tasks (a contraction whose K does not fit one task): each task sums
  at most `chunk` products in fp32, and the chunks' fp32 partial sums are added one after the other in fp32 (task j's
  EW add of task j-1's partial, rocket_fp16_ew_ppu.md §2.3, §7.3; partials are stored as fp32, exactly). Operand
  rounding as in bound_dot. Any summation order satisfies |computed - exact| <= sum_i gamma(t_i) |x_i|, t_i the
  number of rounded additions product i goes through (Higham, Accuracy and Stability of Numerical Algorithms, 2nd
  ed., §4.2): within its task at most chunk - 1, then one per later chunk boundary, at most chunks - 1. So the
  n-term gamma(n-1) of bound_dot becomes gamma(min(n-1, chunk-1 + chunks-1)): the bound still grows with n, through
  the chunk length and the number of chunk boundaries."""
  S = np.asarray(S, dtype=np.float64)
  u, eta = p.u_in, p.eta_in
  e_in = (2*u + u*u)*S + n*(eta*(1+u)*amax + eta*eta)
  depth = min(n - 1, (chunk - 1) + (chunks - 1))
  e_acc = gamma(max(depth, 0), p.u_acc) * (S*(1+u)**2 + n*(eta*(1+u)*amax + eta*eta))
  return e_in + e_acc + _out(p, S + e_in + e_acc)

def bound_matmul(p:Precision, A, B):
  A, B = _f64(A, B)
  amax = (np.abs(A).max(initial=0) + np.abs(B).max(initial=0))
  return bound_dot(p, np.abs(A) @ np.abs(B), A.shape[-1], amax)

def bound_sum(p:Precision, S, n:int, mean:bool=False):
  """sum (or mean) of n terms given S = sum|terms|: each term rounded (u_in, eta_in), an n-term fp32 sum, and for mean a
  multiply by 1/n, the constant itself rounded to the operand format (u_in) and the product to fp32 (u_acc)."""
  S = np.asarray(S, dtype=np.float64)
  e_in = p.u_in*S + n*p.eta_in
  e = e_in + gamma(max(n-1, 0), p.u_acc) * (S + e_in)
  if mean:
    S, e = S/n, e/n
    e = e + (p.u_in + p.u_acc + p.u_in*p.u_acc) * (S + e)
  return e + _out(p, S + e)

def bound_sum_axis(p:Precision, x, axis, mean:bool=False):
  x = np.asarray(x, dtype=np.float64)
  axes = axis if isinstance(axis, tuple) else (axis,)
  return bound_sum(p, np.abs(x).sum(axis=axis), int(np.prod([x.shape[a] for a in axes])), mean)

def bound_select(p:Precision, exact_abs):
  """A result that is one of the (rounded) inputs: max/min pooling and reductions. fp16 rounding is monotonic, so the
  max of rounded values is the rounded max: only one operand rounding and the output rounding."""
  m = np.asarray(exact_abs, dtype=np.float64)
  return p.u_in*m + p.eta_in + _out(p, m)

def assert_within(rocket_out, cpu_out, bound, what:str):
  r, c, b = np.asarray(rocket_out, np.float64), np.asarray(cpu_out, np.float64), np.asarray(bound, np.float64)
  assert r.shape == c.shape, f"{what}: shape {r.shape} != {c.shape}"
  same_inf = np.isinf(r) & (r == c)  # an overflow both devices agree on (float16 results): IEEE's answer
  with np.errstate(invalid="ignore"): err = np.where(same_inf, 0.0, np.abs(r - c))
  bad = ~(err <= b)  # NaN in either result counts as a failure
  if bad.any():
    i = tuple(np.argwhere(bad)[0])
    raise AssertionError(f"{what}: {int(bad.sum())}/{bad.size} elements outside the derived bound; first at {i}: "
                         f"rocket={r[i]!r} cpu={c[i]!r} |diff|={err[i]:.3g} bound={np.broadcast_to(b, err.shape)[i]:.3g}")

SPLIT_SHIFT = 11   # rules/contraction.py SPLIT_SHIFT (a test checks they agree)

def bound_dot_split(S, n:int, amax:float, chunk:int, chunks:int, out:str="float32"):
  """ROCKET_PRECISION=fp32 (rules/contraction.py _split_tasks): a sum of n products x_i*y_i of float32 values, given
  S = sum_i |x_i||y_i| and amax >= max|x| + max|y|, computed as sum hi_x hi_y + 2^-s sum (hi_x lo_y + lo_x hi_y) with
  hi = fl16(x), lo = fl16(2^s (x - hi)), s = SPLIT_SHIFT, u = U16, eta = ETA16 (fp16 rounding: |fl16(v) - v| <= u|v| + eta).
  * representation: r = x - hi is exact, |r| <= u|x| + eta; l = 2^-s lo has |l - r| <= u|r| + 2^-s eta, so x~ = hi + l
    is within delta = u^2|x| + eta' of x, eta' = (u + 2^-s) eta (22 significant bits, not fp32's 24), and
    |x~y~ - xy| <= (2u^2 + u^4)|x||y| + eta'(1 + u^2)(|x| + |y|) + eta'^2;
  * the dropped l_x l_y: |l| <= c|x| + d with c = u(1 + u), d = (1 + u) eta + 2^-s eta, so <= c^2|x||y| + cd(|x| + |y|) + d^2;
  * fp32 accumulation (fp16 products are exact, the 2^-s scaling is an exact power of two; Higham §4.2 as in
    bound_dot_chunked): a hi x hi product goes through at most chunk - 1 additions in its task and one per chunk
    boundary including the add of the cross total (chunks), a cross product through at most 2*chunk - 1 in its task,
    chunks - 1 cross boundaries and chunks hi boundaries: gamma(chunk - 1 + chunks) * sum|hi_x hi_y| +
    gamma(2 chunk + 2 chunks - 2) * sum(|hi_x l_y| + |l_x hi_y|), with |hi| <= (1 + u)|x| + eta;
  * the result: the last add's fp32 value is the float32 output (no further rounding); a float16 output rounds once.
  Against the CPU's float32 bound_dot, the n-dependent gamma term is the same up to the chunk boundaries; the
  representation adds ~2u^2 = 2^-21 of S (a few 2^-24)."""
  S = np.asarray(S, dtype=np.float64)
  u, eta, sc = U16, ETA16, 2.0 ** -SPLIT_SHIFT
  eta_r = (u + sc) * eta
  e_rep = (2*u*u + u**4)*S + n*(eta_r*(1 + u*u)*amax + eta_r*eta_r)
  c, d = u*(1 + u), (1 + u)*eta + sc*eta
  e_drop = c*c*S + n*(c*d*amax + d*d)
  hihi = (1 + u)**2*S + n*((1 + u)*eta*amax + eta*eta)
  cross = 2*(1 + u)*c*S + n*(((1 + u)*d + c*eta)*amax + 2*eta*d)
  e_acc = gamma(chunk - 1 + chunks, U32)*hihi + gamma(2*chunk + 2*chunks - 2, U32)*cross
  e = e_rep + e_drop + e_acc
  return e + (U16*(S + e) + ETA16 if out == "float16" else 0.0)

def conv64(a, b, stride:int=1, padding:int=0, dilation:int=1) -> np.ndarray:
  """The reference conv2d (N, C, H, W) x (K, C, kh, kw) in float64 (numpy: no kernel compiled per shape); `a` zero
  padded by `padding` on each side first."""
  a = np.pad(np.asarray(a, np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  b = np.asarray(b, np.float64)
  kh, kw = b.shape[2:]
  win = np.lib.stride_tricks.sliding_window_view(a, ((kh - 1) * dilation + 1, (kw - 1) * dilation + 1), axis=(2, 3))
  win = win[:, :, ::stride, ::stride, ::dilation, ::dilation]          # (N, C, OH, OW, kh, kw)
  return np.einsum("nchwij,kcij->nkhw", win, b)
