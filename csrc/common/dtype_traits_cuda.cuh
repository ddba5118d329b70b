// Element traits for CUDA kernels written once for every floating dtype: S is the
// storage type (bfloat16/float16 as their 16-bit patterns, so kernels need no
// __nv_bfloat16 arithmetic operators), A the math type (float; double for float64),
// load/store convert (store rounds to nearest even). `for_float_traits` calls f with
// the traits of t and returns false for a dtype it does not cover: the caller raises
// its own error, so each family keeps its message and error type.
#pragma once
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace mte {
namespace cuda_traits {

struct Bf16 {
  using S = uint16_t;
  using A = float;
  static __device__ __forceinline__ A load(S v) { return __bfloat162float(__ushort_as_bfloat16(v)); }
  static __device__ __forceinline__ S store(A v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};
struct Fp16 {
  using S = uint16_t;
  using A = float;
  static __device__ __forceinline__ A load(S v) { return __half2float(__ushort_as_half(v)); }
  static __device__ __forceinline__ S store(A v) { return __half_as_ushort(__float2half_rn(v)); }
};
struct F32 {
  using S = float;
  using A = float;
  static __device__ __forceinline__ A load(S v) { return v; }
  static __device__ __forceinline__ S store(A v) { return v; }
};
struct F64 {
  using S = double;
  using A = double;
  static __device__ __forceinline__ A load(S v) { return v; }
  static __device__ __forceinline__ S store(A v) { return v; }
};

template <class F>
bool for_float_traits(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(F32{}); return true;
    case at::kDouble: f(F64{}); return true;
    case at::kBFloat16: f(Bf16{}); return true;
    case at::kHalf: f(Fp16{}); return true;
    default: return false;
  }
}

// The same conversions keyed by the ATen scalar type (for kernels under AT_DISPATCH, whose
// scalar_t is c10::BFloat16 / c10::Half / float / double): Acc<scalar_t>::A, load, store.
template <typename T>
struct Acc {
  using A = float;
  static __device__ __forceinline__ A load(T v) { return static_cast<A>(v); }
  static __device__ __forceinline__ T store(A v) { return static_cast<T>(v); }
};
template <>
struct Acc<double> {
  using A = double;
  static __device__ __forceinline__ A load(double v) { return v; }
  static __device__ __forceinline__ double store(A v) { return v; }
};
template <>
struct Acc<c10::BFloat16> {
  using A = float;
  static __device__ __forceinline__ A load(c10::BFloat16 v) { return __bfloat162float(__ushort_as_bfloat16(v.x)); }
  static __device__ __forceinline__ c10::BFloat16 store(A v) {
    return c10::BFloat16(__bfloat16_as_ushort(__float2bfloat16_rn(v)), c10::BFloat16::from_bits());
  }
};
template <>
struct Acc<c10::Half> {
  using A = float;
  static __device__ __forceinline__ A load(c10::Half v) { return __half2float(__ushort_as_half(v.x)); }
  static __device__ __forceinline__ c10::Half store(A v) {
    return c10::Half(__half_as_ushort(__float2half_rn(v)), c10::Half::from_bits());
  }
};

}  // namespace cuda_traits
}  // namespace mte
