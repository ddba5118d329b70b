// Pointwise losses on the CPU: one generic kernel family for mse_loss, l1_loss,
// smooth_l1_loss, huber_loss, binary_cross_entropy, binary_cross_entropy_with_logits
// and kl_div (schemas in csrc/ops.cpp, "pwloss family").
//
//   pwloss_fwd(input, target, weight?, pos_weight?, kind, param, reduction, log_target) -> loss
//   pwloss_bwd(grad_output, input, target, weight?, pos_weight?, kind, param, reduction,
//              log_target, need_input, need_target) -> (grad_input, grad_target)
//
// Algorithm. The flat index range [0, numel) is cut into chunks of kChunk = 4096
// elements (a fixed size, independent of the thread count); chunks are split over
// threads with at::parallel_for. Inside a chunk the elementwise loss (or its
// gradients) is computed in at::vec lanes (float32 math for float32/bfloat16/float16,
// float64 for float64) by a small per-kind functor (template on the kind, so the
// switch is resolved once per call, not per element). For reduction 'none' the
// loss is stored; for 'mean'/'sum'/'batchmean' each chunk sums its losses in one
// vector accumulator (tail lanes added one by one, lane order fixed) into a
// per-chunk partial, and the partials are added in chunk order in float64 and
// scaled once (1/numel, 1/size(0) or 1). Chunking does not depend on the thread
// count, so the result is bitwise the same for 1 and 2 threads; no atomics.
//
// Operands. input and target arrive with one shape (minitorch_ext/ops/pwloss.py
// broadcasts with expand(), a view, and autograd sums a broadcast target's
// gradient back through that expand). Each operand is read as: contiguous (flat
// index), a scalar (every stride 0: an expanded 0-d/size-1 tensor, or a
// grad_output that came from .sum() of a 'none' loss), or a last-dim row vector
// (strides 0 except a unit last stride: pos_weight [C] or a per-class weight
// expanded over the batch), which is walked row segment by row segment. Any other
// layout (a transposed input, a broadcast over a middle dim) is materialised
// contiguous once: the only copy, and only for that operand.
//
// No fused gradient in the forward (the Liger trick), on purpose: a custom op
// cannot hand back a saved tensor as its result, so the backward would still
// read the saved gradient and write grad_output * it (N read + N write), for the
// same total traffic as recomputing from input and target (2N read + N write)
// but one N-sized buffer more held between forward and backward, and the
// gradient math paid even by forwards that never run backward (evaluation).
// The forward of a reduced loss therefore reads input and target once and
// writes one scalar; native torch writes the elementwise loss to a temporary
// and reduces it in a second pass (the losses composed of several ops, bce
// with logits and kl_div, make several passes).
//
// Memory traffic: forward 'mean'/'sum': read input + target (+ weights); 'none':
// also write the loss. Backward: read input + target (+ weights, + grad_output
// when 'none') once, write grad_input and/or grad_target once, both from the
// same pass when both are needed.
// The trick: a single pass with the reduction in registers and no temporaries,
// and the pointwise math in vector lanes (Sleef log/exp/log1p of at::vec).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string_view>
#include <vector>

#include "common/alloc.h"
#include "common/vec_reduce.h"

namespace mte {
namespace {

using at::vec::Vectorized;

enum Kind : int { kMse = 0, kL1, kSmoothL1, kHuber, kBce, kBceLogits, kKlDiv };

int parse_kind(std::string_view k) {
  if (k == "mse") return kMse;
  if (k == "l1") return kL1;
  if (k == "smooth_l1") return kSmoothL1;
  if (k == "huber") return kHuber;
  if (k == "bce") return kBce;
  if (k == "bce_logits") return kBceLogits;
  if (k == "kl_div") return kKlDiv;
  TORCH_CHECK_VALUE(false, "pwloss: kind must be one of mse, l1, smooth_l1, huber, bce, bce_logits, kl_div; got '",
                    k, "'");
}

constexpr int64_t kChunk = 4096;

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
constexpr bool is_reduced = std::is_same_v<T, at::BFloat16> || std::is_same_v<T, at::Half>;

template <typename T>
inline Vectorized<acc_t<T>> ld(const T* p) {
  if constexpr (is_reduced<T>) {
    Vectorized<float> v;
    at::vec::load_to_float(p, v);
    return v;
  } else {
    return Vectorized<T>::loadu(p);
  }
}

template <typename T>
inline void st(const Vectorized<acc_t<T>>& v, T* p) {
  if constexpr (is_reduced<T>) {
    // one float vector -> the low half of a bfloat16/float16 vector (round to nearest even), a
    // masked store of its 16 lanes (at::vec::convert would take its scalar loop for fewer than 32)
    at::vec::convert_from_float<T>(v, v).store(p, Vectorized<float>::size());
  } else {
    v.store(p);
  }
}

// An operand as the loops read it (see the header): mode 0 absent, 1 contiguous,
// 2 last-dim row vector of length C, 3 scalar.
template <typename T>
struct Opnd {
  const T* p = nullptr;
  int mode = 0;
};

template <typename T>
Opnd<T> classify(const std::optional<at::Tensor>& t, at::Tensor& hold, int64_t& row) {
  Opnd<T> o;
  if (!t.has_value() || !t->defined()) return o;
  const at::Tensor& x = *t;
  const int64_t nd = x.dim();
  bool scalar = true, rowv = nd >= 1 && (x.stride(nd - 1) == 1 || x.size(nd - 1) == 1);
  for (int64_t d = 0; d < nd; ++d) {
    if (x.size(d) != 1 && x.stride(d) != 0) scalar = false;
    if (d < nd - 1 && x.size(d) != 1 && x.stride(d) != 0) rowv = false;
  }
  if (x.is_contiguous()) {
    o.p = x.const_data_ptr<T>();
    o.mode = 1;
  } else if (scalar) {
    o.p = x.const_data_ptr<T>();
    o.mode = 3;
  } else if (rowv) {
    o.p = x.const_data_ptr<T>();
    o.mode = 2;
    row = x.size(nd - 1);
  } else {
    hold = x.contiguous();
    o.p = hold.const_data_ptr<T>();
    o.mode = 1;
  }
  return o;
}

// The operand's values for the segment starting at flat index i (a segment never
// crosses a row boundary when some operand is a row vector).
template <typename T>
struct Seg {
  const T* q;
  bool bcast;
  acc_t<T> s;
};

template <typename T>
inline Seg<T> seg_of(const Opnd<T>& o, int64_t i, int64_t C) {
  if (o.mode == 3) return {o.p, true, static_cast<acc_t<T>>(o.p[0])};
  if (o.mode == 2) return {o.p + (i % C), false, 0};
  return {o.p ? o.p + i : nullptr, false, 0};
}

template <typename T>
inline Vectorized<acc_t<T>> ldv(const Seg<T>& s, int64_t j) {
  using V = Vectorized<acc_t<T>>;
  return s.bcast ? V(s.s) : ld(s.q + j);
}

// n < V::size() lanes; the rest padded with `pad` (0.5: a valid value for every kind)
template <typename T>
inline Vectorized<acc_t<T>> ldn(const Seg<T>& s, int64_t j, int64_t n) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  if (s.bcast) return V(s.s);
  A buf[V::size()];
  for (int64_t l = 0; l < V::size(); ++l) buf[l] = l < n ? static_cast<A>(s.q[j + l]) : A(0.5);
  return V::loadu(buf);
}

template <typename T>
inline void stn(const Vectorized<acc_t<T>>& v, T* p, int64_t n) {
  using A = acc_t<T>;
  A buf[Vectorized<A>::size()];
  v.store(buf);
  for (int64_t l = 0; l < n; ++l) p[l] = static_cast<T>(buf[l]);
}

template <typename A>
struct Prm {
  A param, half_param;
  bool log_target, has_w, has_pw;
};

template <typename A>
inline Vectorized<A> vsel(const Vectorized<A>& m, const Vectorized<A>& yes, const Vectorized<A>& no) {
  return Vectorized<A>::blendv(no, yes, m);
}

// log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)): never overflows
template <typename A>
inline Vectorized<A> log_sigmoid(const Vectorized<A>& x) {
  using V = Vectorized<A>;
  return at::vec::minimum(x, V(0)) - x.abs().neg().exp().log1p();
}

// The per-kind math. loss(): the elementwise loss (weight applied); grad(): d loss / d input
// and d loss / d target (weight applied), before grad_output and the reduction scale.
template <int K, typename A>
struct Fn {
  using V = Vectorized<A>;

  static V loss(V x, V t, V w, V pw, const Prm<A>& P, V& nbad) {
    V l;
    if constexpr (K == kMse) {
      const V d = x - t;
      l = d * d;
    } else if constexpr (K == kL1) {
      l = (x - t).abs();
    } else if constexpr (K == kSmoothL1) {
      const V z = (x - t).abs();
      l = vsel(z < V(P.param), V(0.5) * z * z / V(P.param), z - V(P.half_param));
    } else if constexpr (K == kHuber) {
      const V z = (x - t).abs();
      l = vsel(z < V(P.param), V(0.5) * z * z, V(P.param) * (z - V(P.half_param)));
    } else if constexpr (K == kBce) {
      const V ok = (x >= V(0)) & (x <= V(1));  // false for NaN
      nbad = nbad + vsel(ok, V(0), V(1));
      const V lx = at::vec::maximum(x.log(), V(-100));
      const V l1x = at::vec::maximum(x.neg().log1p(), V(-100));
      l = (t - V(1)) * l1x - t * lx;
    } else if constexpr (K == kBceLogits) {
      V ls = log_sigmoid(x);
      if (P.has_pw) ls = ls * ((pw - V(1)) * t + V(1));
      l = (V(1) - t) * x - ls;
    } else {  // kl_div
      if (P.log_target) {
        l = t.exp() * (t - x);
      } else {
        const V xlogy = vsel(t == V(0), V(0), t * t.log());
        l = xlogy - t * x;
      }
    }
    if constexpr (K == kBce || K == kBceLogits) {
      if (P.has_w) l = l * w;
    }
    return l;
  }

  static void grad(V x, V t, V w, V pw, const Prm<A>& P, V& gx, V& gt, bool need_t) {
    // need_t == false: the target gradient (logs and exps for bce, bce_logits, kl_div) is skipped
    if constexpr (K == kMse) {
      gx = V(2) * (x - t);
      gt = gx.neg();
    } else if constexpr (K == kL1) {
      const V d = x - t;
      gx = (vsel(d > V(0), V(1), V(0)) - vsel(d < V(0), V(1), V(0)));
      gt = gx.neg();
    } else if constexpr (K == kSmoothL1) {
      const V d = x - t, b(P.param);
      gx = vsel(d <= b.neg(), V(-1), vsel(d >= b, V(1), d / b));
      gt = gx.neg();
    } else if constexpr (K == kHuber) {
      const V d = x - t, dl(P.param);
      gx = vsel(d <= dl.neg(), dl.neg(), vsel(d >= dl, dl, d));
      gt = gx.neg();
    } else if constexpr (K == kBce) {
      gx = (x - t) / at::vec::maximum((V(1) - x) * x, V(A(1e-12)));
      if (need_t) gt = x.neg().log1p() - x.log();
    } else if constexpr (K == kBceLogits) {
      const V sig = V(1) / (V(1) + x.neg().exp());
      if (P.has_pw) {
        const V pt = pw * t;
        gx = (pt + V(1) - t) * sig - pt;
        if (need_t) gt = log_sigmoid(x.neg()) - log_sigmoid(x) * pw;
      } else {
        gx = sig - t;
        gt = x.neg();
      }
    } else {  // kl_div
      if (P.log_target) {
        const V e = t.exp();
        gx = e.neg();
        gt = e * (t - x + V(1));
      } else {
        gx = t.neg();
        if (need_t) gt = vsel(t == V(0), V(0), t.log()) + t / t - x;
      }
    }
    if constexpr (K == kBce || K == kBceLogits) {
      if (P.has_w) {
        gx = gx * w;
        gt = gt * w;
      }
    }
  }
};

// Walk chunk c as row segments; f(seg_begin, seg_len) for each.
template <typename F>
inline void for_segments(int64_t c, int64_t N, int64_t C, F&& f) {
  const int64_t b = c * kChunk, e = std::min(N, b + kChunk);
  for (int64_t i = b; i < e;) {
    const int64_t se = C > 0 ? std::min(e, (i / C + 1) * C) : e;
    f(i, se - i);
    i = se;
  }
}

struct Args {
  at::Tensor input, target;
  std::optional<at::Tensor> weight, pos_weight;
  int kind;
  double param;
  int64_t reduction;
  bool log_target;
};

int64_t n_chunks(int64_t N) { return (N + kChunk - 1) / kChunk; }

double reduce_scale(const at::Tensor& input, int64_t reduction) {
  if (reduction == 1) return 1.0 / static_cast<double>(input.numel());
  if (reduction == 3 && input.dim() > 0) return 1.0 / static_cast<double>(input.size(0));
  return 1.0;
}

template <int K, typename T>
at::Tensor fwd_impl(const Args& a) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size();
  const int64_t N = a.input.numel();
  at::Tensor h0, h1, h2, h3;
  int64_t C = 0;
  const auto ox = classify<T>(a.input, h0, C);
  const auto ot = classify<T>(a.target, h1, C);
  const auto ow = classify<T>(a.weight, h2, C);
  const auto opw = classify<T>(a.pos_weight, h3, C);
  const Prm<A> P{static_cast<A>(a.param), static_cast<A>(0.5 * a.param), a.log_target, ow.mode != 0,
                 opw.mode != 0};
  const bool none = a.reduction == 0;
  at::Tensor out = none ? new_output(a.input.sizes(), a.input.options()) : at::empty({}, a.input.options());
  T* po = none ? out.data_ptr<T>() : nullptr;
  const int64_t nc = n_chunks(N);
  std::vector<double> partial(nc, 0.0);
  std::vector<A> bad(nc, A(0));
  at::parallel_for(0, nc, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      V acc(0), nbad(0);
      A tail = 0;
      for_segments(c, N, C, [&](int64_t i, int64_t n) {
        const auto sx = seg_of(ox, i, C), stt = seg_of(ot, i, C), sw = seg_of(ow, i, C), sp = seg_of(opw, i, C);
        int64_t j = 0;
        for (; j + W <= n; j += W) {
          const V l = Fn<K, A>::loss(ldv(sx, j), ldv(stt, j), sw.q ? ldv(sw, j) : V(1), sp.q ? ldv(sp, j) : V(1),
                                     P, nbad);
          if (none) st<T>(l, po + i + j);
          else acc = acc + l;
        }
        if (j < n) {
          const int64_t r = n - j;
          const V l = Fn<K, A>::loss(ldn(sx, j, r), ldn(stt, j, r), sw.q ? ldn(sw, j, r) : V(1),
                                     sp.q ? ldn(sp, j, r) : V(1), P, nbad);
          if (none) {
            stn<T>(l, po + i + j, r);
          } else {
            A buf[W];
            l.store(buf);
            for (int64_t k = 0; k < r; ++k) tail += buf[k];
          }
        }
      });
      partial[c] = static_cast<double>(hsum(acc)) + static_cast<double>(tail);
      if constexpr (K == kBce) bad[c] = hsum(nbad);
    }
  });
  if constexpr (K == kBce) {
    for (int64_t c = 0; c < nc; ++c) TORCH_CHECK(bad[c] == A(0), "all elements of input should be between 0 and 1");
  }
  if (!none) {
    double s = 0;
    for (int64_t c = 0; c < nc; ++c) s += partial[c];
    // mean of an empty tensor: 0 * (1/0) = NaN, as torch
    const double scale = reduce_scale(a.input, a.reduction);
    out.fill_(static_cast<A>(s) * static_cast<A>(scale));
  }
  return out;
}

template <int K, typename T>
std::tuple<at::Tensor, at::Tensor> bwd_impl(const at::Tensor& grad_output, const Args& a, bool need_x, bool need_t) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size();
  const int64_t N = a.input.numel();
  at::Tensor h0, h1, h2, h3, h4;
  int64_t C = 0;
  const auto ox = classify<T>(a.input, h0, C);
  const auto ot = classify<T>(a.target, h1, C);
  const auto ow = classify<T>(a.weight, h2, C);
  const auto opw = classify<T>(a.pos_weight, h3, C);
  const bool none = a.reduction == 0;
  Opnd<T> og;
  A g0 = 0;
  if (none) {
    og = classify<T>(grad_output, h4, C);
  } else {
    g0 = static_cast<A>(grad_output.item<double>()) * static_cast<A>(reduce_scale(a.input, a.reduction));
  }
  const Prm<A> P{static_cast<A>(a.param), static_cast<A>(0.5 * a.param), a.log_target, ow.mode != 0,
                 opw.mode != 0};
  at::Tensor gx = need_x ? new_output(a.input.sizes(), a.input.options()) : at::empty({0}, a.input.options());
  at::Tensor gt = need_t ? new_output(a.input.sizes(), a.input.options()) : at::empty({0}, a.input.options());
  T* px = need_x ? gx.data_ptr<T>() : nullptr;
  T* pt = need_t ? gt.data_ptr<T>() : nullptr;
  at::parallel_for(0, n_chunks(N), 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      for_segments(c, N, C, [&](int64_t i, int64_t n) {
        const auto sx = seg_of(ox, i, C), stt = seg_of(ot, i, C), sw = seg_of(ow, i, C), sp = seg_of(opw, i, C);
        const auto sg = none ? seg_of(og, i, C) : Seg<T>{nullptr, true, g0};
        int64_t j = 0;
        V dx(0), dt(0);
        for (; j + W <= n; j += W) {
          Fn<K, A>::grad(ldv(sx, j), ldv(stt, j), sw.q ? ldv(sw, j) : V(1), sp.q ? ldv(sp, j) : V(1), P, dx, dt,
                         need_t);
          const V g = sg.bcast ? V(sg.s) : ldv(sg, j);
          if (px) st<T>(dx * g, px + i + j);
          if (pt) st<T>(dt * g, pt + i + j);
        }
        if (j < n) {
          const int64_t r = n - j;
          Fn<K, A>::grad(ldn(sx, j, r), ldn(stt, j, r), sw.q ? ldn(sw, j, r) : V(1), sp.q ? ldn(sp, j, r) : V(1), P,
                         dx, dt, need_t);
          const V g = sg.bcast ? V(sg.s) : ldn(sg, j, r);
          if (px) stn<T>(dx * g, px + i + j, r);
          if (pt) stn<T>(dt * g, pt + i + j, r);
        }
      });
    }
  });
  return {gx, gt};
}

void check_args(const char* fn, const Args& a) {
  const auto dt = a.input.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, fn,
                              ": input: not implemented for '", at::toString(dt),
                              "' (minitorch_ext losses take float32, float64, bfloat16 and float16)");
  TORCH_CHECK(a.target.scalar_type() == dt, fn, ": target: expected dtype ", dt, " (the dtype of input), got ",
              a.target.scalar_type());
  TORCH_CHECK(a.target.sizes() == a.input.sizes(), fn, ": target: expected shape ", a.input.sizes(),
              " (the shape of input), got ", a.target.sizes());
  for (const auto& [t, name] : {std::pair{&a.weight, "weight"}, std::pair{&a.pos_weight, "pos_weight"}}) {
    if (!t->has_value() || !(*t)->defined()) continue;
    TORCH_CHECK((*t)->scalar_type() == dt, fn, ": ", name, ": expected dtype ", dt, " (the dtype of input), got ",
                (*t)->scalar_type());
    TORCH_CHECK((*t)->sizes() == a.input.sizes(), fn, ": ", name, ": expected shape ", a.input.sizes(),
                " (the shape of input, expanded), got ", (*t)->sizes());
  }
  TORCH_CHECK(a.reduction >= 0 && a.reduction <= 3, fn, ": reduction: expected 0 (none), 1 (mean), 2 (sum) or ",
              "3 (batchmean), got ", a.reduction);
  TORCH_CHECK(a.reduction != 3 || a.kind == kKlDiv, fn, ": reduction 3 (batchmean) is for kl_div only");
  TORCH_CHECK(a.kind != kSmoothL1 || a.param > 0, fn, ": smooth_l1 needs beta > 0 (beta == 0 is l1), got ",
              a.param);
  TORCH_CHECK(a.kind != kHuber || a.param > 0, "huber_loss does not support non-positive values for delta.");
  TORCH_CHECK(!a.pos_weight.has_value() || !a.pos_weight->defined() || a.kind == kBceLogits, fn,
              ": pos_weight is for bce_logits only");
  TORCH_CHECK(!a.weight.has_value() || !a.weight->defined() || a.kind == kBce || a.kind == kBceLogits, fn,
              ": weight is for bce and bce_logits only");
}

template <typename F>
auto by_kind(int kind, F&& f) {
  switch (kind) {
    case kMse: return f(std::integral_constant<int, kMse>{});
    case kL1: return f(std::integral_constant<int, kL1>{});
    case kSmoothL1: return f(std::integral_constant<int, kSmoothL1>{});
    case kHuber: return f(std::integral_constant<int, kHuber>{});
    case kBce: return f(std::integral_constant<int, kBce>{});
    case kBceLogits: return f(std::integral_constant<int, kBceLogits>{});
    default: return f(std::integral_constant<int, kKlDiv>{});
  }
}

at::Tensor pwloss_fwd(const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& pos_weight, c10::string_view kind, double param,
                      int64_t reduction, bool log_target) {
  Args a{input, target, weight, pos_weight, parse_kind(std::string_view(kind.data(), kind.size())), param, reduction,
         log_target};
  check_args("pwloss_fwd", a);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "pwloss_fwd", [&] {
    out = by_kind(a.kind, [&](auto k) { return fwd_impl<decltype(k)::value, scalar_t>(a); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pwloss_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                              const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                              const std::optional<at::Tensor>& pos_weight, c10::string_view kind,
                                              double param, int64_t reduction, bool log_target, bool need_input,
                                              bool need_target) {
  Args a{input, target, weight, pos_weight, parse_kind(std::string_view(kind.data(), kind.size())), param, reduction,
         log_target};
  check_args("pwloss_bwd", a);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "pwloss_bwd: grad_output: expected dtype ",
              input.scalar_type(), ", got ", grad_output.scalar_type());
  if (reduction == 0) {
    TORCH_CHECK(grad_output.sizes() == input.sizes(), "pwloss_bwd: grad_output: expected shape ", input.sizes(),
                " (reduction 'none'), got ", grad_output.sizes());
  } else {
    TORCH_CHECK(grad_output.numel() == 1, "pwloss_bwd: grad_output: expected one element (a reduced loss), got shape ",
                grad_output.sizes());
  }
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "pwloss_bwd", [&] {
    out = by_kind(a.kind, [&](auto k) {
      return bwd_impl<decltype(k)::value, scalar_t>(grad_output, a, need_input, need_target);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("pwloss_fwd", &pwloss_fwd);
  m.impl("pwloss_bwd", &pwloss_bwd);
}

}  // namespace mte
