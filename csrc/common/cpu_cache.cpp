// See cpu_cache.h: per-size free lists of large, already-mapped CPU blocks.
#include "common/cpu_cache.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace mte {
namespace {

constexpr size_t kMinCached = size_t(1) << 20;  // smaller blocks: malloc is cheap enough
constexpr size_t kAlign = size_t(2) << 20;      // 2 MiB: huge-page friendly

size_t env_mb(const char* name, size_t dflt) {
  const char* v = std::getenv(name);
  return v ? static_cast<size_t>(std::strtoull(v, nullptr, 10)) : dflt;
}

struct Cache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_lists;
  size_t cached_bytes = 0;
  const size_t cap = env_mb("MINITORCH_EXT_CPU_CACHE_MB", 1024) << 20;
  const bool thp = std::getenv("THP_MEM_ALLOC_ENABLE") && std::string(std::getenv("THP_MEM_ALLOC_ENABLE")) == "1";
  int64_t hits = 0, misses = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: blocks may be freed during interpreter exit
  return *c;
}

size_t round_size(size_t n) { return (n + 4095) & ~size_t(4095); }

struct BlockCtx {
  void* ptr;
  size_t size;
};

void give_back(void* raw) {
  auto* ctx = static_cast<BlockCtx*>(raw);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> g(c.mu);
    if (c.cached_bytes + ctx->size <= c.cap) {
      c.free_lists[ctx->size].push_back(ctx->ptr);
      c.cached_bytes += ctx->size;
      delete ctx;
      return;
    }
  }
  std::free(ctx->ptr);
  delete ctx;
}

class CachingCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t size = round_size(n);
    Cache& c = cache();
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> g(c.mu);
      auto it = c.free_lists.find(size);
      if (it != c.free_lists.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        c.cached_bytes -= size;
        ++c.hits;
      } else {
        ++c.misses;
      }
    }
    if (!p) {
      if (posix_memalign(&p, kAlign, size) != 0) p = nullptr;
      TORCH_CHECK(p, "minitorch_ext: out of CPU memory allocating ", size, " bytes");
#ifdef MADV_HUGEPAGE
      if (c.thp) madvise(p, size, MADV_HUGEPAGE);
#endif
    }
    return {p, new BlockCtx{p, size}, &give_back, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

CachingCPUAllocator* allocator() {
  static auto* a = new CachingCPUAllocator();
  return a;
}

bool enabled() {
  static const bool on = cache().cap > 0;
  return on;
}

}  // namespace

at::Tensor cached_empty_cpu(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  TORCH_INTERNAL_ASSERT(opts.device().is_cpu());
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  if (!enabled() || nbytes < kMinCached) return at::empty(sizes, opts);
  return at::detail::empty_generic(sizes, allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(opts.dtype()), c10::MemoryFormat::Contiguous);
}

int64_t cpu_cache_release() {
  Cache& c = cache();
  std::vector<void*> drop;
  int64_t released = 0;
  {
    std::lock_guard<std::mutex> g(c.mu);
    for (auto& [size, list] : c.free_lists) {
      for (void* p : list) drop.push_back(p);
      released += static_cast<int64_t>(size * list.size());
    }
    c.free_lists.clear();
    c.cached_bytes = 0;
  }
  for (void* p : drop) std::free(p);
  return released;
}

std::tuple<int64_t, int64_t, int64_t> cpu_cache_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> g(c.mu);
  return {static_cast<int64_t>(c.cached_bytes), c.hits, c.misses};
}

}  // namespace mte
