// Output allocation shared by every kernel. In normal runs new_output is
// at::empty (large CPU outputs: the caching allocator of cpu_cache.h). The test checker turns on "poison" (minitorch_ext._C.set_poison),
// and every floating-point output is then filled with NaN before the kernel
// runs, so an element the kernel forgot to write fails the comparison.
#pragma once
// Light headers on purpose: a .cu that pulls <ATen/ATen.h> compiles ~30 s slower
// (every operator's declarations); include the per-operator <ATen/ops/*.h> you use.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <atomic>
#include <cmath>

#include "common/cpu_cache.h"

namespace mte {

std::atomic<bool>& poison_flag();  // defined in bindings.cpp

inline at::Tensor poisoned(at::Tensor t) {
  if (poison_flag().load(std::memory_order_relaxed) && t.is_floating_point() && t.numel() > 0) t.fill_(NAN);
  return t;
}

// CPU outputs come from the caching allocator (cpu_cache.h), others from at::empty.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  if (opts.device().is_cpu()) return poisoned(cached_empty_cpu(sizes, opts));
  return poisoned(at::empty(sizes, opts));
}

inline at::Tensor new_output_like(const at::Tensor& t) { return new_output(t.sizes(), t.options()); }

}  // namespace mte
