// CPU kernels of the dense ops gemm, linear_fwd and linear_bwd (schemas and
// contract: csrc/ops.cpp), all on the GEMM core of gemm.h.
//
// Algorithm.
//   gemm:       out = act(alpha * a . b + beta * c + bias): one call of the core,
//               the epilogue fused into its last K step.
//   linear_fwd: input [*, K] viewed as [M, K] (a view when the strides allow),
//               B = weight^T through strides (weight [N, K] read as K x N with
//               rs = 1, cs = K: no transposed copy); bias + act + preact in
//               the epilogue.
//   linear_bwd: g = grad_output * act'(preact) in one vectorised pass (none
//               when act == "none"), then
//                 grad_input  = g . weight        (NN)
//                 grad_weight = g^T . input       (g^T is g with swapped strides)
//                 grad_bias   = column sums of g  (rows in fixed chunks: bitwise
//                                                  the same for any thread count)
// Memory traffic: each GEMM reads its operands about once from DRAM (the core
// packs them block by block); backward adds one read of grad_output and
// preact and one write of g when there is an activation.
// The trick: no operand is ever transposed or made contiguous for the core:
// transposes and slices are only strides, read by the packing routines.
// dtypes: float32, float64, bfloat16 (float32 math, rounded once on store).
// float16 is refused on the CPU (clear RuntimeError): no widening path here.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <array>
#include <string>

#include "common/act.h"
#include "common/alloc.h"
#include "common/checks.h"
#include "gemm/gemm.h"

namespace mte {
namespace {

using at::vec::Vectorized;

// ---- checks, in torch's words ------------------------------------------------------

void check_gemm_dtype(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s != at::kHalf, name, ": float16 is not supported by the CPU kernel (use float32, float64 or "
              "bfloat16)");
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kBFloat16, name,
              ": expected a floating point tensor (float32, float64 or bfloat16), got ", s);
}

void check_same_dtype_mm(const at::Tensor& m1, const at::Tensor& m2) {
  TORCH_CHECK(m1.dtype() == m2.dtype(), "expected m1 and m2 to have the same dtype, but got: ", m1.dtype(), " != ",
              m2.dtype());
}

void check_param(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  check_same_device(t, name, ref, ref_name);
  TORCH_CHECK(t.dtype() == ref.dtype(), name, ": expected dtype ", ref.dtype(), " (the dtype of ", ref_name,
              "), got ", t.dtype());
}

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

template <typename T>
gemm::Mat<T> mat(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1)};
}
template <typename T>
gemm::Mat<T> mat_t(const at::Tensor& t) {  // the transpose, through strides
  return {t.data_ptr<T>(), t.stride(1), t.stride(0)};
}

// [*, K] as [M, K]: a view when the strides allow, else a copy (reshape's rule).
at::Tensor as_2d(const at::Tensor& t, int64_t M) {
  if (t.dim() == 2) return t;
  return t.reshape({M, t.size(-1)});
}

int64_t leading(const at::Tensor& t) {
  int64_t M = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) M *= t.size(d);
  return M;
}

// ---- gemm ---------------------------------------------------------------------------------

at::Tensor gemm_op(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, double alpha,
                   double beta, const std::optional<at::Tensor>& bias, int64_t bias_dim, c10::string_view act_name,
                   double slope) {
  const Act act = parse_act(act_name);
  check_gemm_dtype(a, "a");
  check_gemm_dtype(b, "b");
  TORCH_CHECK(a.dim() == 2, "a: expected a 2-D tensor, got a ", a.dim(), "-D tensor");
  TORCH_CHECK(b.dim() == 2, "b: expected a 2-D tensor, got a ", b.dim(), "-D tensor");
  check_same_device(b, "b", a, "a");
  TORCH_CHECK(a.size(1) == b.size(0), "mat1 and mat2 shapes cannot be multiplied (", a.size(0), "x", a.size(1),
              " and ", b.size(0), "x", b.size(1), ")");
  check_same_dtype_mm(a, b);
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  TORCH_CHECK_VALUE(bias_dim == 0 || bias_dim == 1, "bias_dim: expected 0 (per row) or 1 (per column), got ",
                    bias_dim);
  if (present(c)) {
    check_param(*c, "c", a, "a");
    TORCH_CHECK(c->dim() == 2 && c->size(0) == M && c->size(1) == N, "c: expected shape [", M, ", ", N,
                "] (the shape of a @ b), got ", c->sizes());
  }
  at::Tensor bias_c;
  if (present(bias)) {
    check_param(*bias, "bias", a, "a");
    const int64_t want = bias_dim == 1 ? N : M;
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == want, "bias: expected shape [", want, "] (",
                bias_dim == 1 ? "per column: the columns of b" : "per row: the rows of a", "), got ",
                bias->sizes());
    bias_c = bias->contiguous();
  }
  auto out = new_output({M, N}, a.options());
  if (M == 0 || N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, a.scalar_type(), "gemm_cpu", [&] {
    gemm::Epilogue<scalar_t> ep;
    ep.alpha = alpha;
    ep.beta = beta;
    if (present(c)) {
      ep.c = c->data_ptr<scalar_t>();
      ep.c_rs = c->stride(0);
      ep.c_cs = c->stride(1);
    }
    if (bias_c.defined()) ep.bias = bias_c.data_ptr<scalar_t>();
    ep.bias_dim = static_cast<int>(bias_dim);
    ep.act = act;
    ep.slope = slope;
    gemm::gemm<scalar_t>(M, N, K, mat<scalar_t>(a), mat<scalar_t>(b), out.data_ptr<scalar_t>(), N, ep);
  });
  return out;
}

// ---- linear forward --------------------------------------------------------------------------

void check_linear(const at::Tensor& input, const at::Tensor& weight) {
  check_gemm_dtype(input, "input");
  check_gemm_dtype(weight, "weight");
  TORCH_CHECK(weight.dim() == 2, "weight: expected a 2-D tensor [out_features, in_features], got a ", weight.dim(),
              "-D tensor");
  TORCH_CHECK(input.dim() >= 1, "input: expected a tensor of at least 1 dimension [*, in_features], got a 0-D one");
  check_same_device(weight, "weight", input, "input");
  TORCH_CHECK(input.size(-1) == weight.size(1), "mat1 and mat2 shapes cannot be multiplied (", leading(input), "x",
              input.size(-1), " and ", weight.size(1), "x", weight.size(0), ")");
  check_same_dtype_mm(input, weight);
}

std::vector<int64_t> out_shape(const at::Tensor& input, int64_t last) {
  std::vector<int64_t> s(input.sizes().begin(), input.sizes().end());
  s.back() = last;
  return s;
}

std::tuple<at::Tensor, at::Tensor> linear_fwd(const at::Tensor& input, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias, c10::string_view act_name,
                                              double slope) {
  const Act act = parse_act(act_name);
  check_linear(input, weight);
  const int64_t N = weight.size(0), K = weight.size(1), M = leading(input);
  at::Tensor bias_c;
  if (present(bias)) {
    check_param(*bias, "bias", input, "input");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "bias: expected shape [", N, "] (out_features), got ",
                bias->sizes());
    bias_c = bias->contiguous();
  }
  const auto shape = out_shape(input, N);
  auto out = new_output(shape, input.options());
  auto preact = act == Act::None ? at::empty({0}, input.options()) : new_output(shape, input.options());
  if (M == 0 || N == 0) return {out, preact};
  const auto x = as_2d(input, M);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "linear_fwd_cpu", [&] {
    gemm::Epilogue<scalar_t> ep;
    if (bias_c.defined()) ep.bias = bias_c.data_ptr<scalar_t>();
    ep.bias_dim = 1;
    ep.act = act;
    ep.slope = slope;
    if (act != Act::None) {
      ep.preact = preact.data_ptr<scalar_t>();
      ep.preact_ld = N;
    }
    gemm::gemm<scalar_t>(M, N, K, mat<scalar_t>(x), mat_t<scalar_t>(weight), out.data_ptr<scalar_t>(), N, ep);
  });
  return {out, preact};
}

// ---- linear backward -------------------------------------------------------------------------

// g = go * act'(pre), rows of N (both contiguous [M, N]), float math.
template <typename T>
void act_grad_rows(const T* go, const T* pre, T* g, int64_t M, int64_t N, Act act, double slope) {
  using A = gemm::Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size();
  const A s = static_cast<A>(slope);
  const int64_t total = M * N;
  at::parallel_for(0, total, 16384, [&](int64_t b, int64_t e) {
    int64_t i = b;
    auto ld = [&](const T* p, int64_t n) {
      if constexpr (std::is_same_v<T, A>) return n == W ? V::loadu(p) : V::loadu(p, n);
      else {
        A tmp[W] = {};
        if (n == W) { V v; at::vec::load_to_float(p, v); return v; }
        for (int64_t k = 0; k < n; ++k) tmp[k] = static_cast<A>(p[k]);
        return V::loadu(tmp);
      }
    };
    auto st = [&](const V& v, T* p, int64_t n) {
      if constexpr (std::is_same_v<T, A>) { if (n == W) v.store(p); else v.store(p, n); }
      else at::vec::convert_from_float<T>(v, v).store(p, n);
    };
    for (; i + W <= e; i += W) st(ld(go + i, W) * act_grad_vec<A>(act, ld(pre + i, W), s), g + i, W);
    if (i < e) st(ld(go + i, e - i) * act_grad_vec<A>(act, ld(pre + i, e - i), s), g + i, e - i);
  });
}

// out[j] = sum over rows i of g[i, j]; each column summed in chunks of kChunk
// rows (a partial per chunk, partials added in order): the order depends on M
// alone, so the sum is bitwise the same for any thread count.
template <typename T>
void column_sums(const at::Tensor& g, int64_t M, int64_t N, T* out) {
  using A = gemm::Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size(), JB = 8 * W, kChunk = 256;
  const T* G = g.data_ptr<T>();
  const int64_t rs = g.stride(0), cs = g.stride(1);
  const int64_t nblk = (N + JB - 1) / JB;
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j0 = blk * JB, nb = std::min(JB, N - j0);
      A tot[JB] = {}, part[JB];
      for (int64_t r0 = 0; r0 < M; r0 += kChunk) {
        const int64_t r1 = std::min(M, r0 + kChunk);
        for (int64_t j = 0; j < JB; ++j) part[j] = 0;
        if (cs == 1 && nb == JB) {
          V acc[JB / W];
          for (int64_t q = 0; q < JB / W; ++q) acc[q] = V(A(0));
          for (int64_t r = r0; r < r1; ++r) {
            const T* row = G + r * rs + j0;
            for (int64_t q = 0; q < JB / W; ++q) {
              V v;
              if constexpr (std::is_same_v<T, A>) v = V::loadu(row + q * W);
              else at::vec::load_to_float(row + q * W, v);
              acc[q] = acc[q] + v;
            }
          }
          for (int64_t q = 0; q < JB / W; ++q) acc[q].store(part + q * W);
        } else {
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t j = 0; j < nb; ++j) part[j] += static_cast<A>(G[r * rs + (j0 + j) * cs]);
        }
        for (int64_t j = 0; j < JB; ++j) tot[j] += part[j];
      }
      for (int64_t j = 0; j < nb; ++j) out[j0 + j] = static_cast<T>(tot[j]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                                          const at::Tensor& weight, const at::Tensor& preact,
                                                          c10::string_view act_name, double slope,
                                                          std::array<bool, 3> output_mask) {
  const Act act = parse_act(act_name);
  check_linear(input, weight);
  const int64_t N = weight.size(0), K = weight.size(1), M = leading(input);
  check_param(grad_output, "grad_output", input, "input");
  const auto oshape = out_shape(input, N);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(oshape), "grad_output: expected shape ", at::IntArrayRef(oshape),
              " (input's leading dims x out_features), got ", grad_output.sizes());
  if (act != Act::None) {
    check_param(preact, "preact", input, "input");
    TORCH_CHECK(preact.sizes() == grad_output.sizes(), "preact: expected shape ", grad_output.sizes(),
                " (the shape of grad_output), got ", preact.sizes());
  }
  const auto opts = input.options();
  auto gi = output_mask[0] ? new_output(input.sizes(), opts) : at::empty({0}, opts);
  auto gw = output_mask[1] ? new_output({N, K}, opts) : at::empty({0}, opts);
  auto gb = output_mask[2] ? new_output({N}, opts) : at::empty({0}, opts);
  if (!output_mask[0] && !output_mask[1] && !output_mask[2]) return {gi, gw, gb};

  at::Tensor g = as_2d(grad_output, M);
  if (act != Act::None && M > 0 && N > 0) {
    auto go = g.contiguous();
    auto pre = as_2d(preact, M).contiguous();
    auto gbuf = new_output({M, N}, opts);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "linear_bwd_act_cpu", [&] {
      act_grad_rows<scalar_t>(go.data_ptr<scalar_t>(), pre.data_ptr<scalar_t>(), gbuf.data_ptr<scalar_t>(), M, N,
                              act, slope);
    });
    g = gbuf;
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "linear_bwd_cpu", [&] {
    const gemm::Epilogue<scalar_t> plain;
    if (output_mask[0] && M > 0 && K > 0)  // [M,N] . [N,K]
      gemm::gemm<scalar_t>(M, K, N, mat<scalar_t>(g), mat<scalar_t>(weight), gi.data_ptr<scalar_t>(), K, plain);
    if (output_mask[1] && N > 0 && K > 0) {  // [N,M] . [M,K]
      const auto x = as_2d(input, M);
      gemm::gemm<scalar_t>(N, K, M, mat_t<scalar_t>(g), mat<scalar_t>(x), gw.data_ptr<scalar_t>(), K, plain);
    }
    if (output_mask[2] && N > 0) column_sums<scalar_t>(g, M, N, gb.data_ptr<scalar_t>());
  });
  return {gi, gw, gb};
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("gemm", &mte::gemm_op);
  m.impl("linear_fwd", &mte::linear_fwd);
  m.impl("linear_bwd", &mte::linear_bwd);
}
