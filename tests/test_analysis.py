"""Kernel analysis: tinygrad kernels as loop nests with affine buffer accesses and padding bounds."""
import pytest
from tinygrad import Tensor
from tinygrad_rocket._tg import Ops
from tinygrad_rocket.analysis import analyze, NotAnalyzable, Affine, Load, Reduce, Alu, Const

def kernels(t:Tensor):
  lin, _ = t.linear_with_vars()
  return [c.src[0] for c in lin.src if c.src[0].op is Ops.SINK]

def only_kernel(t:Tensor):
  (k,) = kernels(t)
  return analyze(k)

def by_slot(nest): return {ld.slot: ld for ld in nest.loads}

def strides(aff:Affine, nest) -> dict[int, int]:
  """coefficient per range, keyed by the range's size order for readability: {size: coeff}"""
  return {nest.ranges[r]: c for r, c in aff.terms}

def test_matmul_affine_maps():
  n = only_kernel(Tensor.empty(16, 32) @ Tensor.empty(32, 8))
  assert sorted(n.ranges.values()) == [8, 16, 32] and len(n.reduce_ranges) == 1
  (k,) = n.reduce_ranges
  a, b = by_slot(n)[1], by_slot(n)[2]
  assert a.index.coeff(k) == 1 and b.index.coeff(k) == 8
  assert isinstance(n.value, Reduce) and n.value.op is Ops.ADD and n.value.ranges == (k,)
  assert strides(n.out_index, n) == {16: 8, 8: 1}

def test_conv_padding_becomes_bounds():
  n = only_kernel(Tensor.empty(1, 4, 8, 8).conv2d(Tensor.empty(6, 4, 3, 3), Tensor.empty(6), padding=1).relu())
  x, w, bias = by_slot(n)[1], by_slot(n)[2], by_slot(n)[3]
  assert x.pad == 0.0 and len(x.valid) == 4 and x.index.const == -9   # -(1 row * 8 + 1 col): the padding offset
  assert {(b.lo, b.hi) for b in x.valid} == {(1, None), (None, 9)}      # 1 <= oy+ky < 9: pad 1 on each side of 8
  assert not w.valid and sorted(w.index.terms, key=lambda t: t[1])[-1][1] == 36  # output-channel stride 4*3*3
  assert bias.index.terms and len(bias.index.terms) == 1
  assert isinstance(n.value, Alu) and n.value.op is Ops.MAX and isinstance(n.value.src[0], Const) and n.value.src[0].value == 0.0

def test_strided_and_permuted_views_are_affine():
  n = only_kernel(Tensor.empty(6, 8)[:, ::2].permute(1, 0) * 3)
  (x,) = n.loads
  assert sorted(c for _, c in x.index.terms) == [2, 8]

def test_non_affine_index_is_reported():
  """r % 5 and r // 5 over 14 points: no split of r into whole periods exists."""
  t = Tensor.empty(15).reshape(3, 5).permute(1, 0).reshape(15)[:14] + Tensor.empty(14)
  with pytest.raises(NotAnalyzable, match="more than one period|not affine"):
    for k in kernels(t): analyze(k)

def test_divided_range_splits_into_its_axes():
  """A transposed reshape loops once over 12 points and indexes the source with r % 3 and r // 3: the range splits
  into hi (4) and lo (3), r = 3*hi + lo, and every index is affine and addresses the same elements as the kernel."""
  n = only_kernel(Tensor.empty(12).reshape(3, 4).permute(1, 0).reshape(12) + Tensor.empty(12))
  assert sorted(n.ranges.values()) == [3, 4] and len(n.output_ranges) == 2
  hi, lo = sorted(n.ranges, key=lambda r: -n.ranges[r])
  for h in range(4):
    for l in range(3):
      point, r = {hi: h, lo: l}, 3*h + l
      assert n.out_index.eval(point) == r
      assert sorted(ld.index.eval(point) for ld in n.loads) == sorted([r, (r % 3) * 4 + r // 3])

def test_affine_evaluates_like_the_kernel():
  aff = Affine.of({0: 3, 1: 1}, -2)
  assert aff.eval({0: 2, 1: 5}) == 9 and (aff + aff.scale(2)).eval({0: 1, 1: 1}) == 6

def test_strided_dilated_conv_modulo_index_resolves():
  """tinygrad writes a padded strided conv's input index as (affine + c) % size; within the padding predicate it
  stays in one period, so it is affine there."""
  n = only_kernel(Tensor.empty(1, 4, 9, 9).conv2d(Tensor.empty(6, 4, 3, 3), stride=2, dilation=2, padding=2))
  x = by_slot(n)[1]
  assert x.valid and all(0 <= x.index.eval(p) < 324 for p in _valid_points(n, x))

def _valid_points(n, ld):
  import itertools
  ids = sorted(n.ranges)
  for vals in itertools.product(*(range(n.ranges[r]) for r in ids)):
    p = dict(zip(ids, vals))
    if all((b.lo is None or b.expr.eval(p) >= b.lo) and (b.hi is None or b.expr.eval(p) < b.hi) for b in ld.valid): yield p

def test_padded_load_written_the_other_way_round():
  """A conv whose edge windows start in the padding (kernel 2, stride 2, pad 1): tinygrad writes the padded load as
  WHERE(invalid, 0, INDEX(..., WHERE(NOT invalid, idx, Invalid))); its validity is the index's guard."""
  n = only_kernel(Tensor.empty(1, 1, 3).conv2d(Tensor.empty(1, 1, 2), stride=2, padding=1))
  x = by_slot(n)[1]
  assert x.pad == 0.0 and [(b.lo, b.hi) for b in x.valid] == [(1, None)]   # 1 <= 2*o + k: the left pad

def test_padded_max_pool_load_reads_as_a_padded_load():
  """tinygrad pads max pooling with -inf as WHERE(c, WHERE(c, load, 0), -inf) (or inverted): one padded load."""
  n = only_kernel(Tensor.empty(1, 2, 7, 7).max_pool2d(3, 2, padding=1))
  (x,) = n.loads
  assert x.pad == float("-inf") and x.valid
  assert isinstance(n.value, Reduce) and n.value.op is Ops.MAX
