// The activations, one definition for every CPU kernel: the GEMM epilogue
// (csrc/gemm/), the elementwise kernels (csrc/act/) and, later, the conv and
// RNN-cell epilogues. Each comes as a scalar and an at::vec form on the
// accumulation type (float, or double for float64), forward and derivative.
//
//   relu        max(x, 0)                        d: x > 0
//   leaky_relu  x > 0 ? x : slope*x              d: x > 0 ? 1 : slope
//   gelu        x * Phi(x), Phi(x) = (1 + erf(x/sqrt2)) / 2
//                                                d: Phi(x) + x*phi(x)
//   gelu_tanh   x/2 * (1 + tanh(u)), u = sqrt(2/pi) * (x + 0.044715 x^3)
//                                                d: (1+t)/2 + x/2 (1-t^2) u'
//   silu        x * s, s = sigmoid(x)            d: s * (1 + x (1 - s))
//   tanh        tanh(x)                          d: 1 - y^2
//   sigmoid     1 / (1 + exp(-x))                d: y (1 - y)
//
// The vector forms use the same at::vec functions as torch's own CPU kernels
// (Sleef erf/tanh/exp), so the results agree with torch to the last few ulps.
// Derivatives "from the output" (relu, leaky_relu with slope >= 0, tanh,
// sigmoid) serve in-place forwards, which keep only the output.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <cmath>

#include "common/act_kind.h"

namespace mte {

// ---- scalar forms (T = float or double) --------------------------------------

template <typename T>
inline T act_scalar(Act a, T x, T slope) {
  constexpr T kInvSqrt2 = T(0.70710678118654752440);
  constexpr T kSqrt2OverPi = T(0.79788456080286535588);
  switch (a) {
    case Act::None: return x;
    case Act::ReLU: return std::isnan(x) ? x : (x > T(0) ? x : T(0));
    case Act::LeakyReLU: return x > T(0) ? x : x * slope;
    case Act::GELU: return x * T(0.5) * (T(1) + std::erf(x * kInvSqrt2));
    case Act::GELUTanh: {
      T u = kSqrt2OverPi * (x + T(0.044715) * x * x * x);
      return T(0.5) * x * (T(1) + std::tanh(u));
    }
    case Act::SiLU: return x / (T(1) + std::exp(-x));
    case Act::Tanh: return std::tanh(x);
    case Act::Sigmoid: return T(1) / (T(1) + std::exp(-x));
  }
  return x;
}

// d act / dx at the pre-activation x
template <typename T>
inline T act_grad_scalar(Act a, T x, T slope) {
  constexpr T kInvSqrt2 = T(0.70710678118654752440);
  constexpr T kInvSqrt2Pi = T(0.39894228040143267794);
  constexpr T kSqrt2OverPi = T(0.79788456080286535588);
  switch (a) {
    case Act::None: return T(1);
    case Act::ReLU: return x > T(0) ? T(1) : T(0);
    case Act::LeakyReLU: return x > T(0) ? T(1) : slope;
    case Act::GELU: {
      T cdf = T(0.5) * (T(1) + std::erf(x * kInvSqrt2));
      T pdf = kInvSqrt2Pi * std::exp(T(-0.5) * x * x);
      return cdf + x * pdf;
    }
    case Act::GELUTanh: {
      T x2 = x * x;
      T u = kSqrt2OverPi * (x + T(0.044715) * x2 * x);
      T t = std::tanh(u);
      T du = kSqrt2OverPi * (T(1) + T(3) * T(0.044715) * x2);
      return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
    }
    case Act::SiLU: {
      T s = T(1) / (T(1) + std::exp(-x));
      return s * (T(1) + x * (T(1) - s));
    }
    case Act::Tanh: {
      T t = std::tanh(x);
      return T(1) - t * t;
    }
    case Act::Sigmoid: {
      T s = T(1) / (T(1) + std::exp(-x));
      return s * (T(1) - s);
    }
  }
  return T(1);
}

// d act / dx from the output y (only where act_grad_from_output_ok)
template <typename T>
inline T act_grad_from_output_scalar(Act a, T y, T slope) {
  switch (a) {
    case Act::ReLU: return y > T(0) ? T(1) : T(0);
    case Act::LeakyReLU: return y > T(0) ? T(1) : slope;
    case Act::Tanh: return T(1) - y * y;
    case Act::Sigmoid: return y * (T(1) - y);
    default: return T(1);
  }
}

// ---- vector forms ------------------------------------------------------------

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> vsigmoid(const Vec<T>& x) {
  return (Vec<T>(T(1)) + x.neg().exp()).reciprocal();
}

template <typename T>
inline Vec<T> act_vec(Act a, const Vec<T>& x, T slope) {
  const Vec<T> zero(T(0)), one(T(1)), half(T(0.5));
  switch (a) {
    case Act::None: return x;
    case Act::ReLU: return at::vec::clamp_min(x, zero);  // NaN stays NaN, as torch.relu
    case Act::LeakyReLU: return Vec<T>::blendv(x * Vec<T>(slope), x, x > zero);
    case Act::GELU: return x * half * (one + (x * Vec<T>(T(0.70710678118654752440))).erf());
    case Act::GELUTanh: {
      Vec<T> u = Vec<T>(T(0.79788456080286535588)) * (x + Vec<T>(T(0.044715)) * x * x * x);
      return half * x * (one + u.tanh());
    }
    case Act::SiLU: return x * vsigmoid(x);
    case Act::Tanh: return x.tanh();
    case Act::Sigmoid: return vsigmoid(x);
  }
  return x;
}

template <typename T>
inline Vec<T> act_grad_vec(Act a, const Vec<T>& x, T slope) {
  const Vec<T> zero(T(0)), one(T(1)), half(T(0.5));
  switch (a) {
    case Act::None: return one;
    case Act::ReLU: return Vec<T>::blendv(zero, one, x > zero);
    case Act::LeakyReLU: return Vec<T>::blendv(Vec<T>(slope), one, x > zero);
    case Act::GELU: {
      Vec<T> cdf = half * (one + (x * Vec<T>(T(0.70710678118654752440))).erf());
      Vec<T> pdf = Vec<T>(T(0.39894228040143267794)) * (Vec<T>(T(-0.5)) * x * x).exp();
      return cdf + x * pdf;
    }
    case Act::GELUTanh: {
      const Vec<T> k(T(0.79788456080286535588)), c(T(0.044715));
      Vec<T> x2 = x * x;
      Vec<T> t = (k * (x + c * x2 * x)).tanh();
      Vec<T> du = k * (one + Vec<T>(T(3)) * c * x2);
      return half * (one + t) + half * x * (one - t * t) * du;
    }
    case Act::SiLU: {
      Vec<T> s = vsigmoid(x);
      return s * (one + x * (one - s));
    }
    case Act::Tanh: {
      Vec<T> t = x.tanh();
      return one - t * t;
    }
    case Act::Sigmoid: {
      Vec<T> s = vsigmoid(x);
      return s * (one - s);
    }
  }
  return one;
}

template <typename T>
inline Vec<T> act_grad_from_output_vec(Act a, const Vec<T>& y, T slope) {
  const Vec<T> zero(T(0)), one(T(1));
  switch (a) {
    case Act::ReLU: return Vec<T>::blendv(zero, one, y > zero);
    case Act::LeakyReLU: return Vec<T>::blendv(Vec<T>(slope), one, y > zero);
    case Act::Tanh: return one - y * y;
    case Act::Sigmoid: return y * (one - y);
    default: return one;
  }
}

}  // namespace mte
