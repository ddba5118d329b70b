// Activations and softmax on the CPU: act_fwd, act_bwd, act_ (in place),
// softmax_fwd, softmax_bwd (schemas in csrc/ops.cpp, math in common/act.h).
//
// Elementwise (act_fwd / act_bwd / act_).
//   Algorithm. The operands (output first) are walked as rows: size-1 dims are
//   dropped and neighbouring dims merged wherever every operand lays them out
//   contiguously, so a contiguous tensor is one long row and a sliced or
//   transposed one a few strided rows. Rows are cut into segments of kSeg
//   elements and the segments split over threads (at::parallel_for). A segment
//   is read into a float (double) buffer of L1 size, unless it already is one
//   (a unit-stride float/double operand is used in place), the activation runs
//   over it in at::vec lanes with the shared act.h formulas, and the result is
//   stored (converted once to bfloat16/float16, or scattered to a strided
//   destination). act_ orders the dims by self's strides first, so any
//   non-overlapping layout is walked in memory order and written in place.
//   Memory traffic: each input read once, the output written once (in place:
//   read once, written once): the elementwise minimum.
//   The trick: merging dims turns nearly every real layout into long
//   unit-stride rows, and the segment buffer keeps the conversion and the
//   vector math in L1, so the loops run at memory speed for relu and at the
//   Sleef exp/erf/tanh throughput for the others.
//
// Softmax / log_softmax over dim, the input viewed as [outer, D, inner].
//   inner == 1 (the last dim): per row, pass 1 the max, pass 2 sum(exp(x-max))
//   (softmax stores exp(x-max) in the output row), pass 3 the scaling
//   (softmax: * 1/sum; log_softmax: (x - max) - log(sum)). The row (widened
//   to float for bfloat16/float16) stays in L1/L2 between the passes, so the
//   input is read from memory once and the output written once.
//   inner > 1: the passes run across a tile of up to 64 neighbouring columns at
//   once, vectorized along inner (the unit-stride direction), D rows deep;
//   tiles of (outer, column block) are split over threads.
//   Backward: softmax dx = y * (dy - sum(dy*y)); log_softmax dx = dy - exp(y)*sum(dy).
//   Sums accumulate in float (double for float64) with 4 independent vector
//   accumulators; bfloat16/float16 results are rounded once on store.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/WrapDimUtils.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "common/vec_reduce.h"
#include "common/act.h"
#include "common/alloc.h"
#include "common/checks.h"

// The segment buffers are written before they are read whenever they are used;
// GCC cannot see through load_seg/dest_seg and warns.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace mte {
namespace {

using at::vec::Vectorized;

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

constexpr int64_t kSeg = 1024;  // elements per segment: 4-8 KB per buffer, L1-resident

// ---- the strided walk ---------------------------------------------------------

constexpr int kMaxOps = 3;

// Rows of n elements; row r of operand k starts at element offset row_offset(r, k)
// and steps by inner[k].
struct Walk {
  int nops = 0;
  int64_t n = 1;
  std::vector<int64_t> outer;                        // outer sizes, outermost first
  std::array<std::vector<int64_t>, kMaxOps> ostride;  // outer strides per operand
  std::array<int64_t, kMaxOps> inner{};
  int64_t rows() const {
    int64_t r = 1;
    for (auto s : outer) r *= s;
    return r;
  }
  void row_offsets(int64_t r, int64_t* off) const {
    for (int k = 0; k < nops; ++k) off[k] = 0;
    for (int64_t d = static_cast<int64_t>(outer.size()) - 1; d >= 0 && r > 0; --d) {
      const int64_t i = r % outer[d];
      r /= outer[d];
      for (int k = 0; k < nops; ++k) off[k] += i * ostride[k][d];
    }
  }
};

// order_by_first: walk the dims in operand 0's memory order (largest stride
// outermost), for in-place updates of any layout; else in logical order.
Walk make_walk(at::IntArrayRef sizes, const std::vector<at::IntArrayRef>& strides, bool order_by_first) {
  const int nops = static_cast<int>(strides.size());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < static_cast<int64_t>(sizes.size()); ++d)
    if (sizes[d] != 1) dims.push_back(d);
  if (order_by_first)
    std::stable_sort(dims.begin(), dims.end(),
                     [&](int64_t a, int64_t b) { return strides[0][a] > strides[0][b]; });
  // merge from the innermost dim outwards
  std::vector<int64_t> sz;
  std::array<std::vector<int64_t>, kMaxOps> st;
  for (auto it = dims.rbegin(); it != dims.rend(); ++it) {
    const int64_t d = *it;
    bool merge = !sz.empty();
    for (int k = 0; merge && k < nops; ++k) merge = strides[k][d] == st[k].back() * sz.back();
    if (merge) {
      sz.back() *= sizes[d];
    } else {
      sz.push_back(sizes[d]);
      for (int k = 0; k < nops; ++k) st[k].push_back(strides[k][d]);
    }
  }
  Walk w;
  w.nops = nops;
  if (sz.empty()) {  // a single element (or all dims 1)
    for (int k = 0; k < nops; ++k) w.inner[k] = 1;
    return w;
  }
  w.n = sz.front();
  for (int k = 0; k < nops; ++k) w.inner[k] = st[k].front();
  // sz/st hold innermost first; outer wants outermost first
  for (size_t i = sz.size(); i-- > 1;) {
    w.outer.push_back(sz[i]);
    for (int k = 0; k < nops; ++k) w.ostride[k].push_back(st[k][i]);
  }
  return w;
}

// f(off[], len) for every segment of every row, offsets in elements; segments in parallel.
template <typename F>
void for_segments(const Walk& w, F f) {
  const int64_t nseg = (w.n + kSeg - 1) / kSeg;
  const int64_t tasks = w.rows() * nseg;
  if (tasks == 0 || w.n == 0) return;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::min(kSeg, w.n));  // >= 32K elements a task
  at::parallel_for(0, tasks, grain, [&](int64_t b, int64_t e) {
    int64_t off[kMaxOps];
    for (int64_t t = b; t < e; ++t) {
      const int64_t r = t / nseg, s = t % nseg;
      w.row_offsets(r, off);
      const int64_t start = s * kSeg;
      for (int k = 0; k < w.nops; ++k) off[k] += start * w.inner[k];
      f(off, std::min(kSeg, w.n - start));
    }
  });
}

// A segment of len elements at p (stride `stride`) as acc_t: the memory itself
// when it already is a unit-stride acc_t row, else a copy in buf.
template <typename scalar_t, typename acc_t>
const acc_t* load_seg(const scalar_t* p, int64_t stride, int64_t len, acc_t* buf) {
  if (stride == 1) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) return p;
    else { at::vec::convert(p, buf, len); return buf; }
  }
  for (int64_t i = 0; i < len; ++i) buf[i] = static_cast<acc_t>(p[i * stride]);
  return buf;
}

// Where to compute a segment's result: the destination itself when it is a unit-stride acc_t row.
template <typename scalar_t, typename acc_t>
acc_t* dest_seg(scalar_t* p, int64_t stride, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (stride == 1) return p;
  }
  return buf;
}

template <typename scalar_t, typename acc_t>
void store_seg(const acc_t* src, scalar_t* p, int64_t stride, int64_t len) {
  if (stride == 1) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (src != p) std::copy(src, src + len, p);
    } else {
      at::vec::convert(src, p, len);
    }
    return;
  }
  for (int64_t i = 0; i < len; ++i) p[i * stride] = static_cast<scalar_t>(src[i]);
}

// ---- the vector loops, one instantiation per activation -----------------------

template <typename F>
void with_act(Act a, F f) {
  switch (a) {
    case Act::None: return f(std::integral_constant<Act, Act::None>{});
    case Act::ReLU: return f(std::integral_constant<Act, Act::ReLU>{});
    case Act::LeakyReLU: return f(std::integral_constant<Act, Act::LeakyReLU>{});
    case Act::GELU: return f(std::integral_constant<Act, Act::GELU>{});
    case Act::GELUTanh: return f(std::integral_constant<Act, Act::GELUTanh>{});
    case Act::SiLU: return f(std::integral_constant<Act, Act::SiLU>{});
    case Act::Tanh: return f(std::integral_constant<Act, Act::Tanh>{});
    case Act::Sigmoid: return f(std::integral_constant<Act, Act::Sigmoid>{});
  }
}

// Whole pairs of vectors, then the rest (under 2 vectors) element by element
// with the scalar formulas, as torch's own vectorized loops do: the short rows
// of small or strided tensors then get std::erf/std::exp accuracy, as torch's.
template <Act A, typename T>
void act_seg(const T* x, T* y, int64_t n, T slope) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {  // two vectors in flight hide the Sleef latency
    const V a = act_vec(A, V::loadu(x + i), slope);
    const V b = act_vec(A, V::loadu(x + i + W), slope);
    a.store(y + i);
    b.store(y + i + W);
  }
  for (; i < n; ++i) y[i] = act_scalar(A, x[i], slope);
}

// dx = dy * act'(s), s the forward input (kFromOut: its output). ReLU and
// LeakyReLU select instead of multiplying, as torch does (an inf dy stays finite
// where the slope is 0).
template <Act A, bool kFromOut, typename T>
inline Vectorized<T> grad_vec(const Vectorized<T>& dy, const Vectorized<T>& s, T slope) {
  using V = Vectorized<T>;
  if constexpr (A == Act::ReLU) return V::blendv(V(T(0)), dy, s > V(T(0)));
  else if constexpr (A == Act::LeakyReLU) return V::blendv(dy * V(slope), dy, s > V(T(0)));
  else if constexpr (kFromOut) return dy * act_grad_from_output_vec(A, s, slope);
  else return dy * act_grad_vec(A, s, slope);
}

template <Act A, bool kFromOut, typename T>
inline T grad_scalar(T dy, T s, T slope) {
  if constexpr (A == Act::ReLU) return s > T(0) ? dy : T(0);
  else if constexpr (A == Act::LeakyReLU) return s > T(0) ? dy : dy * slope;
  else if constexpr (kFromOut) return dy * act_grad_from_output_scalar(A, s, slope);
  else return dy * act_grad_scalar(A, s, slope);
}

template <Act A, bool kFromOut, typename T>
void act_bwd_seg(const T* dy, const T* s, T* dx, int64_t n, T slope) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const V a = grad_vec<A, kFromOut>(V::loadu(dy + i), V::loadu(s + i), slope);
    const V b = grad_vec<A, kFromOut>(V::loadu(dy + i + W), V::loadu(s + i + W), slope);
    a.store(dx + i);
    b.store(dx + i + W);
  }
  for (; i < n; ++i) dx[i] = grad_scalar<A, kFromOut>(dy[i], s[i], slope);
}

// ---- elementwise drivers ---------------------------------------------------------

// An operand whose rows step by more than kFarStride elements (a transposed
// input: every element on another cache line, often another page) is first made
// contiguous by ATen's blocked copy: two streaming passes beat one that misses
// the cache and the TLB on every element. Near strides (a slice x[:, ::2])
// are gathered directly: their rows share cache lines.
constexpr int64_t kFarStride = 16;

bool far_inner(const at::Tensor& t, const at::Tensor& like) {
  const Walk w = make_walk(like.sizes(), {like.strides(), t.strides()}, false);
  return w.inner[1] > kFarStride;
}

// out (contiguous or self) = act(x), both walked together.
template <typename scalar_t>
void act_apply(const at::Tensor& x_in, at::Tensor& out, Act a, double slope_d, bool in_place) {
  using acc_t = acc_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(slope_d);
  const at::Tensor x = (!in_place && far_inner(x_in, out)) ? x_in.contiguous() : x_in;
  const Walk w = in_place ? make_walk(out.sizes(), {out.strides()}, true)
                          : make_walk(out.sizes(), {out.strides(), x.strides()}, false);
  scalar_t* Y = out.data_ptr<scalar_t>();
  const scalar_t* X = in_place ? Y : x.data_ptr<scalar_t>();
  const int kx = in_place ? 0 : 1;
  with_act(a, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    for_segments(w, [&](const int64_t* off, int64_t len) {
      acc_t xb[kSeg], yb[kSeg];
      const acc_t* xs = load_seg(X + off[kx], w.inner[kx], len, xb);
      acc_t* ys = dest_seg(Y + off[0], w.inner[0], yb);
      act_seg<A>(xs, ys, len, slope);
      store_seg(ys, Y + off[0], w.inner[0], len);
    });
  });
}

// Integer tensors: relu only (as torch), max(x, 0) element by element.
template <typename scalar_t>
void relu_int(const at::Tensor& x, at::Tensor& out, bool in_place) {
  const Walk w = in_place ? make_walk(out.sizes(), {out.strides()}, true)
                          : make_walk(out.sizes(), {out.strides(), x.strides()}, false);
  scalar_t* Y = out.data_ptr<scalar_t>();
  const scalar_t* X = in_place ? Y : x.data_ptr<scalar_t>();
  const int kx = in_place ? 0 : 1;
  for_segments(w, [&](const int64_t* off, int64_t len) {
    const scalar_t* xp = X + off[kx];
    scalar_t* yp = Y + off[0];
    const int64_t sx = w.inner[kx], sy = w.inner[0];
    for (int64_t i = 0; i < len; ++i) {
      const scalar_t v = xp[i * sx];
      yp[i * sy] = v > scalar_t(0) ? v : scalar_t(0);
    }
  });
}

template <typename scalar_t>
void act_bwd_apply(const at::Tensor& dy_in, const at::Tensor& s_in, at::Tensor& dx, Act a, double slope_d,
                   bool from_out) {
  using acc_t = acc_type<scalar_t>;
  const at::Tensor dy = far_inner(dy_in, dx) ? dy_in.contiguous() : dy_in;
  const at::Tensor s = far_inner(s_in, dx) ? s_in.contiguous() : s_in;
  const acc_t slope = static_cast<acc_t>(slope_d);
  const Walk w = make_walk(dx.sizes(), {dx.strides(), dy.strides(), s.strides()}, false);
  scalar_t* DX = dx.data_ptr<scalar_t>();
  const scalar_t* DY = dy.data_ptr<scalar_t>();
  const scalar_t* S = s.data_ptr<scalar_t>();
  with_act(a, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    for_segments(w, [&](const int64_t* off, int64_t len) {
      acc_t db[kSeg], sb[kSeg], xb[kSeg];
      const acc_t* dys = load_seg(DY + off[1], w.inner[1], len, db);
      const acc_t* ss = load_seg(S + off[2], w.inner[2], len, sb);
      acc_t* dxs = dest_seg(DX + off[0], w.inner[0], xb);
      if (from_out) act_bwd_seg<A, true>(dys, ss, dxs, len, slope);
      else act_bwd_seg<A, false>(dys, ss, dxs, len, slope);
      store_seg(dxs, DX + off[0], w.inner[0], len);
    });
  });
}

// ---- argument checks ---------------------------------------------------------------

bool is_int_type(at::ScalarType t) { return at::isIntegralType(t, /*includeBool=*/false); }

void check_act_input(const at::Tensor& t, const char* name, Act a, const char* op) {
  const auto st = t.scalar_type();
  if (is_int_type(st) && (a == Act::ReLU || a == Act::None)) return;  // integer relu, as torch
  TORCH_CHECK_NOT_IMPLEMENTED(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
                              op, ": ", name, ": \"", op, "\" not implemented for '", c10::toString(st),
                              "' (expected float32, float64, bfloat16 or float16",
                              a == Act::ReLU ? ", or an integer type for relu" : "", ")");
}

void check_cpu(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, ": expected a CPU tensor, got one on ", t.device());
}

void check_same(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                const char* op) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, ": expected shape ", ref.sizes(), " (the shape of ",
              ref_name, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, ": expected dtype ", ref.scalar_type(),
              " (the dtype of ", ref_name, "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, ": expected a tensor on ", ref.device(),
              " (the device of ", ref_name, "), got one on ", t.device());
}

// ---- elementwise ops ------------------------------------------------------------------

at::Tensor act_fwd(const at::Tensor& input, c10::string_view act, double slope) {
  const Act a = parse_act(act);
  check_cpu(input, "input", "act_fwd");
  check_act_input(input, "input", a, "act_fwd");
  at::Tensor out = new_output(input.sizes(), input.options());
  if (input.numel() == 0) return out;
  if (is_int_type(input.scalar_type())) {
    AT_DISPATCH_INTEGRAL_TYPES(input.scalar_type(), "act_fwd_int", [&] { relu_int<scalar_t>(input, out, false); });
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "act_fwd_cpu",
                                  [&] { act_apply<scalar_t>(input, out, a, slope, false); });
  return out;
}

void act_inplace(const at::Tensor& self, c10::string_view act, double slope) {
  const Act a = parse_act(act);
  check_cpu(self, "self", "act_");
  check_act_input(self, "self", a, "act_");
  TORCH_CHECK(at::has_internal_overlap(self) != at::MemOverlap::Yes,
              "act_: self: unsupported operation: more than one element of the written-to tensor refers to a "
              "single memory location. Please clone() the tensor before performing the operation.");
  if (self.numel() == 0) return;
  at::Tensor t = self;
  if (is_int_type(self.scalar_type())) {
    AT_DISPATCH_INTEGRAL_TYPES(self.scalar_type(), "act_int_", [&] { relu_int<scalar_t>(t, t, true); });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, self.scalar_type(), "act_cpu_",
                                  [&] { act_apply<scalar_t>(t, t, a, slope, true); });
}

at::Tensor act_bwd(const at::Tensor& grad_output, const at::Tensor& saved, c10::string_view act, double slope,
                   bool saved_is_output) {
  const Act a = parse_act(act);
  check_cpu(saved, "saved", "act_bwd");
  check_float(saved, "act_bwd: saved");
  check_same(grad_output, "grad_output", saved, "saved", "act_bwd");
  TORCH_CHECK(!saved_is_output || act_grad_from_output_ok(a, slope), "act_bwd: saved_is_output: the derivative "
              "of '", std::string(act), "'", a == Act::LeakyReLU ? " with a negative slope" : "",
              " cannot be computed from its output; save the forward input instead");
  at::Tensor dx = new_output(saved.sizes(), saved.options());
  if (saved.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, saved.scalar_type(), "act_bwd_cpu", [&] {
    act_bwd_apply<scalar_t>(grad_output, saved, dx, a, slope, saved_is_output);
  });
  return dx;
}

// ---- softmax -----------------------------------------------------------------------------

template <typename T>
inline T hmax(const Vectorized<T>& v) {  // NaN anywhere gives NaN, as torch's max
  constexpr int64_t W = Vectorized<T>::size();
  T buf[W];
  v.store(buf);
  T m = buf[0];
  for (int64_t k = 0; k < W; ++k) {
    if (std::isnan(buf[k])) return buf[k];
    m = std::max(m, buf[k]);
  }
  return m;
}

// sum over a row of f(i, count) (lanes past count must give 0), 4 accumulators.
// A cascade: chunks of kSumChunk elements are summed in T, the chunk sums in double,
// so each float lane adds at most 16 terms (AVX-512) before its partial is flushed:
// on a 65537-element row the error is a few ulps of the sum, not ~1e-6 relative
// (plain per-lane accumulation over 1024 terms was 4x worse than torch's cascade sum).
constexpr int64_t kSumChunk = 1024;

template <typename T, typename F>
inline T row_sum(int64_t n, F f) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  double total = 0;
  int64_t i = 0;
  for (;;) {
    const int64_t end = std::min(n, i + kSumChunk);
    V a0(0), a1(0), a2(0), a3(0);
    for (; i + 4 * W <= end; i += 4 * W) {
      a0 += f(i, W);
      a1 += f(i + W, W);
      a2 += f(i + 2 * W, W);
      a3 += f(i + 3 * W, W);
    }
    for (; i + W <= end; i += W) a0 += f(i, W);
    if (i < end) {
      a1 += V::set(V(0), f(i, end - i), end - i);
      i = end;
    }
    if (end == n && total == 0 && n <= kSumChunk) return hsum((a0 + a1) + (a2 + a3));  // one chunk: as before
    total += static_cast<double>(hsum((a0 + a1) + (a2 + a3)));
    if (i >= n) break;
  }
  return static_cast<T>(total);
}

template <typename T>
inline Vectorized<T> ld(const T* p, int64_t count) {
  return count == Vectorized<T>::size() ? Vectorized<T>::loadu(p) : Vectorized<T>::loadu(p, count);
}

template <typename T>
inline void st(const Vectorized<T>& v, T* p, int64_t count) {
  if (count == Vectorized<T>::size()) v.store(p); else v.store(p, count);
}

template <typename T, typename F>
inline void for_vecs(int64_t n, F f) {
  constexpr int64_t W = Vectorized<T>::size();
  int64_t i = 0;
  for (; i + W <= n; i += W) f(i, W);
  if (i < n) f(i, n - i);
}

template <typename T>
T row_max(const T* x, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  const T ninf = -std::numeric_limits<T>::infinity();
  V m0(ninf), m1(ninf);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    m0 = at::vec::maximum(m0, V::loadu(x + i));  // maximum propagates NaN
    m1 = at::vec::maximum(m1, V::loadu(x + i + W));
  }
  for (; i + W <= n; i += W) m0 = at::vec::maximum(m0, V::loadu(x + i));
  if (i < n) m1 = at::vec::maximum(m1, V::set(V(ninf), V::loadu(x + i, n - i), n - i));
  return hmax(at::vec::maximum(m0, m1));
}

// One row of D elements (inner == 1), acc_t in and out (y may alias a scratch row).
template <typename T>
void softmax_row(const T* x, T* y, int64_t D, bool log) {
  using V = Vectorized<T>;
  const T m = row_max(x, D);
  const V vm(m);
  if (log) {
    const T s = row_sum<T>(D, [&](int64_t i, int64_t c) { return (ld(x + i, c) - vm).exp(); });
    const V logs(std::log(s));  // (x - max) - log(sum): exact x - max first, as torch
    for_vecs<T>(D, [&](int64_t i, int64_t c) { st((ld(x + i, c) - vm) - logs, y + i, c); });
  } else {
    const T s = row_sum<T>(D, [&](int64_t i, int64_t c) {
      const V e = (ld(x + i, c) - vm).exp();
      st(e, y + i, c);
      return e;
    });
    const V inv(T(1) / s);
    for_vecs<T>(D, [&](int64_t i, int64_t c) { st(ld(y + i, c) * inv, y + i, c); });
  }
}

template <typename T>
void softmax_bwd_row(const T* dy, const T* y, T* dx, int64_t D, bool log) {
  using V = Vectorized<T>;
  if (log) {
    const V s(row_sum<T>(D, [&](int64_t i, int64_t c) { return ld(dy + i, c); }));
    for_vecs<T>(D, [&](int64_t i, int64_t c) { st(ld(dy + i, c) - ld(y + i, c).exp() * s, dx + i, c); });
  } else {
    const V s(row_sum<T>(D, [&](int64_t i, int64_t c) { return ld(dy + i, c) * ld(y + i, c); }));
    for_vecs<T>(D, [&](int64_t i, int64_t c) { st(ld(y + i, c) * (ld(dy + i, c) - s), dx + i, c); });
  }
}

// inner == 1: rows in parallel; a bfloat16/float16 row is widened once into
// per-task scratch and narrowed once.
template <typename scalar_t, typename RowFn>
void last_dim_rows(int64_t rows, int64_t D, int nin, const scalar_t* const* in, scalar_t* out, RowFn fn) {
  using acc_t = acc_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<scalar_t, acc_t>;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
    std::vector<acc_t> buf(kDirect ? 0 : static_cast<size_t>(D) * (nin + 1));
    for (int64_t r = b; r < e; ++r) {
      const acc_t* a[2];
      for (int k = 0; k < nin; ++k) {
        if constexpr (kDirect) a[k] = in[k] + r * D;
        else { at::vec::convert(in[k] + r * D, buf.data() + k * D, D); a[k] = buf.data() + k * D; }
      }
      acc_t* o;
      if constexpr (kDirect) o = out + r * D;
      else o = buf.data() + nin * D;
      fn(a, o);
      if constexpr (!kDirect) at::vec::convert(o, out + r * D, D);
    }
  });
}

// inner > 1: tiles of up to kCols columns (unit stride) x D rows (stride inner).
// 64 columns = 256 bytes of each row: a deep tile (large D) spills L2 between
// its passes, but narrower tiles measured slower (more pages touched per byte).
constexpr int64_t kCols = 64;

inline int64_t tile_cols(int64_t /*D*/, int64_t inner) { return std::min(kCols, inner); }

// Loads row d of a tile (cols elements) as acc_t: in place for acc_t, else widened into buf.
template <typename scalar_t, typename acc_t>
inline const acc_t* tile_row(const scalar_t* p, int64_t cols, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) return p;
  else { at::vec::convert(p, buf, cols); return buf; }
}

template <typename scalar_t>
void softmax_inner(const scalar_t* X, scalar_t* Y, int64_t outer, int64_t D, int64_t inner, bool log) {
  using acc_t = acc_type<scalar_t>;
  using V = Vectorized<acc_t>;
  const int64_t TC = tile_cols(D, inner);
  const int64_t nblk = (inner + TC - 1) / TC;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D * TC, 1));
  at::parallel_for(0, outer * nblk, grain, [&](int64_t b, int64_t e) {
    acc_t m[kCols], s[kCols], xb[kCols], yb[kCols];
    for (int64_t t = b; t < e; ++t) {
      const int64_t o = t / nblk, c0 = (t % nblk) * TC, cols = std::min(TC, inner - c0);
      const scalar_t* x = X + o * D * inner + c0;
      scalar_t* y = Y + o * D * inner + c0;
      std::fill(m, m + cols, -std::numeric_limits<acc_t>::infinity());
      std::fill(s, s + cols, acc_t(0));
      for (int64_t d = 0; d < D; ++d) {
        const acc_t* xr = tile_row(x + d * inner, cols, xb);
        for_vecs<acc_t>(cols, [&](int64_t i, int64_t c) { st(at::vec::maximum(ld(m + i, c), ld(xr + i, c)), m + i, c); });
      }
      for (int64_t d = 0; d < D; ++d) {
        const acc_t* xr = tile_row(x + d * inner, cols, xb);
        for_vecs<acc_t>(cols, [&](int64_t i, int64_t c) {
          st(ld(s + i, c) + (ld(xr + i, c) - ld(m + i, c)).exp(), s + i, c);
        });
      }
      // the per-column constants: softmax 1/s, log_softmax m + log(s)
      for (int64_t i = 0; i < cols; ++i) s[i] = log ? std::log(s[i]) : acc_t(1) / s[i];
      for (int64_t d = 0; d < D; ++d) {
        const acc_t* xr = tile_row(x + d * inner, cols, xb);
        acc_t* yr = dest_seg(y + d * inner, 1, yb);
        for_vecs<acc_t>(cols, [&](int64_t i, int64_t c) {
          const V v = ld(xr + i, c);
          const V d = v - ld(m + i, c);
          st(log ? d - ld(s + i, c) : d.exp() * ld(s + i, c), yr + i, c);
        });
        store_seg(yr, y + d * inner, 1, cols);
      }
    }
  });
}

template <typename scalar_t>
void softmax_bwd_inner(const scalar_t* DY, const scalar_t* Yp, scalar_t* DX, int64_t outer, int64_t D,
                       int64_t inner, bool log) {
  using acc_t = acc_type<scalar_t>;
  using V = Vectorized<acc_t>;
  const int64_t TC = tile_cols(D, inner);
  const int64_t nblk = (inner + TC - 1) / TC;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D * TC, 1));
  at::parallel_for(0, outer * nblk, grain, [&](int64_t b, int64_t e) {
    acc_t s[kCols], db[kCols], yb[kCols], xb[kCols];
    for (int64_t t = b; t < e; ++t) {
      const int64_t o = t / nblk, c0 = (t % nblk) * TC, cols = std::min(TC, inner - c0);
      const int64_t base = o * D * inner + c0;
      std::fill(s, s + cols, acc_t(0));
      for (int64_t d = 0; d < D; ++d) {
        const acc_t* dyr = tile_row(DY + base + d * inner, cols, db);
        const acc_t* yr = tile_row(Yp + base + d * inner, cols, yb);
        for_vecs<acc_t>(cols, [&](int64_t i, int64_t c) {
          st(log ? ld(s + i, c) + ld(dyr + i, c) : at::vec::fmadd(ld(dyr + i, c), ld(yr + i, c), ld(s + i, c)), s + i, c);
        });
      }
      for (int64_t d = 0; d < D; ++d) {
        const acc_t* dyr = tile_row(DY + base + d * inner, cols, db);
        const acc_t* yr = tile_row(Yp + base + d * inner, cols, yb);
        acc_t* dxr = dest_seg(DX + base + d * inner, 1, xb);
        for_vecs<acc_t>(cols, [&](int64_t i, int64_t c) {
          const V g = ld(dyr + i, c), y = ld(yr + i, c), sv = ld(s + i, c);
          st(log ? g - y.exp() * sv : y * (g - sv), dxr + i, c);
        });
        store_seg(dxr, DX + base + d * inner, 1, cols);
      }
    }
  });
}

struct Dims {
  int64_t outer, D, inner;
};

Dims softmax_dims(const at::Tensor& t, int64_t dim) {
  Dims d{1, 1, 1};
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i < dim) d.outer *= t.size(i);
    else if (i == dim) d.D = t.size(i);
    else d.inner *= t.size(i);
  }
  return d;
}

void check_softmax_input(const at::Tensor& t, const char* name, const char* op) {
  const auto st = t.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
                              op, ": ", name, ": \"", op, "\" not implemented for '", c10::toString(st),
                              "' (expected float32, float64, bfloat16 or float16)");
  check_cpu(t, name, op);
}

at::Tensor softmax_fwd(const at::Tensor& input, int64_t dim, bool log) {
  check_softmax_input(input, "input", "softmax_fwd");
  dim = at::maybe_wrap_dim(dim, input.dim());
  const at::Tensor x = input.contiguous();
  at::Tensor out = new_output(x.sizes(), x.options());
  if (x.numel() == 0) return out;
  const Dims d = softmax_dims(x, dim);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "softmax_fwd_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* X = x.data_ptr<scalar_t>();
    scalar_t* Y = out.data_ptr<scalar_t>();
    if (d.inner == 1) {
      const scalar_t* in[1] = {X};
      last_dim_rows<scalar_t>(d.outer, d.D, 1, in, Y,
                              [&](const acc_t* const* a, acc_t* o) { softmax_row(a[0], o, d.D, log); });
    } else {
      softmax_inner<scalar_t>(X, Y, d.outer, d.D, d.inner, log);
    }
  });
  return out;
}

at::Tensor softmax_bwd(const at::Tensor& grad_output, const at::Tensor& output, int64_t dim, bool log) {
  check_softmax_input(output, "output", "softmax_bwd");
  check_same(grad_output, "grad_output", output, "output", "softmax_bwd");
  dim = at::maybe_wrap_dim(dim, output.dim());
  const at::Tensor y = output.contiguous();
  const at::Tensor dy = grad_output.contiguous();
  at::Tensor dx = new_output(y.sizes(), y.options());
  if (y.numel() == 0) return dx;
  const Dims d = softmax_dims(y, dim);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "softmax_bwd_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* DY = dy.data_ptr<scalar_t>();
    const scalar_t* Yp = y.data_ptr<scalar_t>();
    scalar_t* DX = dx.data_ptr<scalar_t>();
    if (d.inner == 1) {
      const scalar_t* in[2] = {DY, Yp};
      last_dim_rows<scalar_t>(d.outer, d.D, 2, in, DX, [&](const acc_t* const* a, acc_t* o) {
        softmax_bwd_row(a[0], a[1], o, d.D, log);
      });
    } else {
      softmax_bwd_inner<scalar_t>(DY, Yp, DX, d.outer, d.D, d.inner, log);
    }
  });
  return dx;
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("act_fwd", &mte::act_fwd);
  m.impl("act_bwd", &mte::act_bwd);
  m.impl("act_", &mte::act_inplace);
  m.impl("softmax_fwd", &mte::softmax_fwd);
  m.impl("softmax_bwd", &mte::softmax_bwd);
}
