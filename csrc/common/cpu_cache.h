// A caching allocator for large CPU kernel outputs.
//
// Why: a fresh 32 MB CPU tensor costs ~13 ms of page faults (3 ms with huge
// pages), more than the kernel that fills it. A training loop asks for the
// same sizes every step, so, like torch's CUDA caching allocator, we keep
// freed blocks of >= 1 MiB in per-size free lists and hand them out again
// with their pages already mapped. The cache holds at most
// MINITORCH_EXT_CPU_CACHE_MB (default 1024) MiB of free blocks; 0 turns it
// off. minitorch_ext.empty_cache() releases what it holds.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace mte {

// at::empty(sizes, opts) for CPU tensors, drawing large ones from the cache.
at::Tensor cached_empty_cpu(at::IntArrayRef sizes, const at::TensorOptions& opts);

// Free every cached block; returns the bytes released.
int64_t cpu_cache_release();

// (bytes currently cached, cache hits, cache misses)
std::tuple<int64_t, int64_t, int64_t> cpu_cache_stats();

}  // namespace mte
