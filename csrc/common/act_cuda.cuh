// The activations on the GPU: the same formulas as csrc/common/act.h (see the
// table there), as __device__ functions on float or double, for the GEMM
// epilogue (csrc/gemm/gemm_cuda.cu) and the elementwise kernels
// (csrc/act/act_cuda.cu). bfloat16/float16 values are widened to float first.
#pragma once
#include "common/act_kind.h"

namespace mte {
namespace dev {

__device__ __forceinline__ float erf_(float x) { return erff(x); }
__device__ __forceinline__ double erf_(double x) { return erf(x); }
// setup.py compiles with --use_fast_math, which turns tanhf into tanh.approx.f32
// (relative error ~2^-11): float tanh goes through double, which fast-math
// leaves exact, so float results agree with torch's to float32 rounding
__device__ __forceinline__ float tanh_(float x) { return static_cast<float>(tanh(static_cast<double>(x))); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T act(Act a, T x, T slope) {
  switch (a) {
    case Act::None: return x;
    case Act::ReLU: return (x != x) ? x : (x > T(0) ? x : T(0));
    case Act::LeakyReLU: return x > T(0) ? x : x * slope;
    case Act::GELU: return x * T(0.5) * (T(1) + erf_(x * T(0.70710678118654752440)));
    case Act::GELUTanh: {
      T u = T(0.79788456080286535588) * (x + T(0.044715) * x * x * x);
      return T(0.5) * x * (T(1) + tanh_(u));
    }
    case Act::SiLU: return x / (T(1) + exp_(-x));
    case Act::Tanh: return tanh_(x);
    case Act::Sigmoid: return T(1) / (T(1) + exp_(-x));
  }
  return x;
}

// d act / dx at the pre-activation x
template <typename T>
__device__ __forceinline__ T act_grad(Act a, T x, T slope) {
  switch (a) {
    case Act::None: return T(1);
    case Act::ReLU: return x > T(0) ? T(1) : T(0);
    case Act::LeakyReLU: return x > T(0) ? T(1) : slope;
    case Act::GELU: {
      T cdf = T(0.5) * (T(1) + erf_(x * T(0.70710678118654752440)));
      T pdf = T(0.39894228040143267794) * exp_(T(-0.5) * x * x);
      return cdf + x * pdf;
    }
    case Act::GELUTanh: {
      T x2 = x * x;
      T u = T(0.79788456080286535588) * (x + T(0.044715) * x2 * x);
      T t = tanh_(u);
      T du = T(0.79788456080286535588) * (T(1) + T(3) * T(0.044715) * x2);
      return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
    }
    case Act::SiLU: {
      T s = T(1) / (T(1) + exp_(-x));
      return s * (T(1) + x * (T(1) - s));
    }
    case Act::Tanh: {
      T t = tanh_(x);
      return T(1) - t * t;
    }
    case Act::Sigmoid: {
      T s = T(1) / (T(1) + exp_(-x));
      return s * (T(1) - s);
    }
  }
  return T(1);
}

// d act / dx from the output y (only where act_grad_from_output_ok)
template <typename T>
__device__ __forceinline__ T act_grad_from_output(Act a, T y, T slope) {
  switch (a) {
    case Act::ReLU: return y > T(0) ? T(1) : T(0);
    case Act::LeakyReLU: return y > T(0) ? T(1) : slope;
    case Act::Tanh: return T(1) - y * y;
    case Act::Sigmoid: return y * (T(1) - y);
    default: return T(1);
  }
}

}  // namespace dev
}  // namespace mte
