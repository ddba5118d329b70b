// Embedding on the CPU: embedding_fwd (gather), embedding_bwd (deterministic
// scatter-add), embedding_renorm_ (max_norm); schemas in csrc/ops.cpp.
//
// Forward: out[i, :] = weight[indices[i], :], one row copy (memcpy, D contiguous
//   elements) per index, parallel over the indices; the row kAhead indices ahead is
//   prefetched while this one is copied (random rows of a table larger than the cache:
//   without it the copy waits on each row's misses). Traffic: read n rows, write n rows.
// Backward: grad_weight[r, :] = sum over {i : indices[i] == r} of grad_output[i, :]
//   (times 1 / count(r) under scale_grad_by_freq; zero for r == padding_idx).
//   1. a counting sort of the indices by row (O(num_weights + n), serial, tiny next to
//      the gradient): start[r] .. start[r+1] lists, in increasing i, the positions
//      holding r;
//   2. parallel_for over rows: the thread that owns row r sums its positions' grad rows
//      in increasing i into a float (double) row buffer and writes row r once; a row
//      nobody references is written as zeros in the same pass.
//   No atomics, and every row is summed in the same order whatever the thread count,
//   so the result is bitwise repeatable (1 or 2 threads alike). Traffic: read
//   grad_output once, write grad_weight once. torch's CPU backward zero-fills a fresh
//   [num_weights, D] tensor (page faults on a 50 MB table) and then index_adds into it:
//   two passes over the table; ours is one, into a cached buffer, with streaming stores
//   for the zero rows of a table larger than the cache (no read-for-ownership).
// Renorm: the referenced rows (sorted, unique) whose norm_type-norm exceeds max_norm
//   are scaled by max_norm / (norm + 1e-7), in place, rows in parallel (distinct rows:
//   no write conflict), as torch's embedding_renorm_.
// bfloat16 / float16 tables: sums in float, rounded once per element.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/alloc.h"

namespace mte {
namespace {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int64_t kAhead = 6;  // forward: rows prefetched ahead of the copy

void check_indices(const at::Tensor& indices) {
  const auto it = indices.scalar_type();
  TORCH_CHECK(it == at::kLong || it == at::kInt,
              "Expected tensor for argument #1 'indices' to have one of the following scalar types: Long, Int; "
              "but got ", indices.toString(), " instead (while checking arguments for embedding)");
}

void check_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "'weight' must be 2-D");
  const auto st = weight.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
              "weight: expected a floating point tensor (float32, float64, bfloat16 or float16), got ", st);
}

at::Tensor embedding_fwd(const at::Tensor& weight, const at::Tensor& indices, int64_t padding_idx,
                         bool scale_grad_by_freq) {
  check_indices(indices);
  check_weight(weight);
  TORCH_CHECK(weight.device() == indices.device(), "indices: expected a tensor on ", weight.device(),
              " (the device of weight), got one on ", indices.device());
  const at::Tensor w = weight.stride(1) == 1 ? weight : weight.contiguous();
  const at::Tensor idx = indices.contiguous();
  const int64_t V = w.size(0), D = w.size(1), n = idx.numel();
  std::vector<int64_t> sizes(indices.sizes().begin(), indices.sizes().end());
  sizes.push_back(D);
  at::Tensor out = new_output(sizes, w.options());
  if (n == 0 || D == 0) {
    // still refuse an out-of-range index (as torch's index_select)
    bool bad = false;
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "embedding_fwd", [&] {
      const index_t* ip = idx.const_data_ptr<index_t>();
      for (int64_t i = 0; i < n; ++i) bad |= ip[i] < 0 || ip[i] >= V;
    });
    TORCH_CHECK_INDEX(!bad, "index out of range in self");
    return out;
  }
  const int64_t ws = w.stride(0);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "embedding_fwd", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "embedding_fwd", [&] {
      const index_t* ip = idx.const_data_ptr<index_t>();
      const int64_t grain = std::max<int64_t>(1, 16384 / D);
      const int64_t row_bytes = static_cast<int64_t>(sizeof(scalar_t)) * D;
      at::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          // the rows are random lines of a table larger than the cache: ask for row i + kAhead
          // now, so its misses overlap this row's copy (a gather is latency bound otherwise)
          if (i + kAhead < i1) {
            const int64_t kp = static_cast<int64_t>(ip[i + kAhead]);
            if (kp >= 0 && kp < V) {
              const char* pr = reinterpret_cast<const char*>(wp + kp * ws);
              for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(pr + b, 0, 3);
            }
          }
          const int64_t k = static_cast<int64_t>(ip[i]);
          if (k < 0 || k >= V) {
            bad.store(true, std::memory_order_relaxed);
            continue;
          }
          std::memcpy(op + i * D, wp + k * ws, row_bytes);
        }
      });
    });
  });
  TORCH_CHECK_INDEX(!bad.load(), "index out of range in self");
  return out;
}

// start[r] .. start[r+1]: the positions i (increasing) with indices[i] == r
template <typename index_t>
void counting_sort(const index_t* ip, int64_t n, int64_t V, std::vector<int64_t>& start,
                   std::vector<int64_t>& order) {
  start.assign(V + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = static_cast<int64_t>(ip[i]);
    TORCH_CHECK_INDEX(k >= 0 && k < V, "index out of range in self");
    ++start[k + 1];
  }
  for (int64_t r = 0; r < V; ++r) start[r + 1] += start[r];
  std::vector<int64_t> pos(start.begin(), start.end() - 1);
  order.resize(n);
  for (int64_t i = 0; i < n; ++i) order[pos[static_cast<int64_t>(ip[i])]++] = i;
}

at::Tensor embedding_bwd(const at::Tensor& grad_output, const at::Tensor& indices, int64_t num_weights,
                         int64_t padding_idx, bool scale_grad_by_freq) {
  check_indices(indices);
  TORCH_CHECK(num_weights >= 0, "num_weights: expected >= 0, got ", num_weights);
  TORCH_CHECK(grad_output.dim() == indices.dim() + 1, "grad_output: expected ", indices.dim() + 1,
              " dims (indices.shape + [embedding_dim]), got ", grad_output.sizes());
  for (int64_t d = 0; d < indices.dim(); ++d)
    TORCH_CHECK(grad_output.size(d) == indices.size(d), "grad_output: expected shape ", indices.sizes(),
                " + [embedding_dim], got ", grad_output.sizes());
  const auto st = grad_output.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
              "grad_output: expected a floating point tensor, got ", st);
  const int64_t D = grad_output.size(-1), n = indices.numel(), V = num_weights;
  const at::Tensor g = grad_output.contiguous();
  const at::Tensor idx = indices.contiguous();
  at::Tensor gw = new_output({V, D}, g.options());
  if (V == 0 || D == 0) return gw;
  std::vector<int64_t> start, order;
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "embedding_bwd",
                          [&] { counting_sort(idx.const_data_ptr<index_t>(), n, V, start, order); });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st, "embedding_bwd", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* wp = gw.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / D);
    const int64_t row_bytes = static_cast<int64_t>(sizeof(scalar_t)) * D;
    // streaming stores for the (mostly zero) rows of a gradient larger than the cache: no
    // read-for-ownership of lines that are only written (half the traffic of a memset)
    const bool nt = V * row_bytes >= (int64_t{16} << 20) && row_bytes % 64 == 0 &&
                    reinterpret_cast<uintptr_t>(wp) % 64 == 0;
    at::parallel_for(0, V, grain, [&](int64_t r0, int64_t r1) {
      std::vector<A> acc(D);
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t* dst = wp + r * D;
        const int64_t b = start[r], e = start[r + 1];
        if (b == e || r == padding_idx) {
#if defined(__AVX512F__)
          if (nt) {
            const __m512i z = _mm512_setzero_si512();
            char* d8 = reinterpret_cast<char*>(dst);
            for (int64_t o = 0; o < row_bytes; o += 64) _mm512_stream_si512(reinterpret_cast<__m512i*>(d8 + o), z);
            continue;
          }
#endif
          std::memset(static_cast<void*>(dst), 0, row_bytes);  // all-zero bits: +0.0
          continue;
        }
        const A sc = scale_grad_by_freq ? A(1) / static_cast<A>(e - b) : A(1);
        A* a = acc.data();
        {
          const scalar_t* src = gp + order[b] * D;
          for (int64_t d = 0; d < D; ++d) a[d] = static_cast<A>(src[d]) * sc;
        }
        for (int64_t q = b + 1; q < e; ++q) {
          const scalar_t* src = gp + order[q] * D;
          for (int64_t d = 0; d < D; ++d) a[d] += static_cast<A>(src[d]) * sc;
        }
        for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(a[d]);
      }
#if defined(__AVX512F__)
      if (nt) _mm_sfence();  // streaming stores are weakly ordered: each thread fences its own
#endif
    });
  });
  return gw;
}

template <typename A>
double row_norm(const A* v, int64_t D, double p) {
  double s = 0;
  if (std::isinf(p)) {
    for (int64_t d = 0; d < D; ++d) s = std::max(s, std::abs(static_cast<double>(v[d])));
    return s;
  }
  if (p == 0) {
    for (int64_t d = 0; d < D; ++d) s += v[d] != A(0);
    return s;
  }
  if (p == 1) {
    for (int64_t d = 0; d < D; ++d) s += std::abs(static_cast<double>(v[d]));
    return s;
  }
  if (p == 2) {
    for (int64_t d = 0; d < D; ++d) s += static_cast<double>(v[d]) * static_cast<double>(v[d]);
    return std::sqrt(s);
  }
  for (int64_t d = 0; d < D; ++d) s += std::pow(std::abs(static_cast<double>(v[d])), p);
  return std::pow(s, 1.0 / p);
}

void embedding_renorm_(at::Tensor& weight, const at::Tensor& indices, double max_norm, double norm_type) {
  check_indices(indices);
  check_weight(weight);
  const int64_t V = weight.size(0), D = weight.size(1);
  std::vector<int64_t> rows;
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "embedding_renorm_", [&] {
    const at::Tensor idx = indices.contiguous();
    const index_t* ip = idx.const_data_ptr<index_t>();
    rows.assign(ip, ip + idx.numel());
  });
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  for (const int64_t k : rows) TORCH_CHECK_INDEX(k >= 0 && k < V, "index out of range in self");
  if (rows.empty() || D == 0) return;
  const int64_t ws0 = weight.stride(0), ws1 = weight.stride(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "embedding_renorm_", [&] {
    using A = acc_t<scalar_t>;
    scalar_t* wp = weight.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(rows.size()), std::max<int64_t>(1, 16384 / D),
                     [&](int64_t q0, int64_t q1) {
      std::vector<A> buf(D);
      for (int64_t q = q0; q < q1; ++q) {
        scalar_t* row = wp + rows[q] * ws0;
        for (int64_t d = 0; d < D; ++d) buf[d] = static_cast<A>(row[d * ws1]);
        const double norm = row_norm(buf.data(), D, norm_type);
        if (norm > max_norm) {
          const A scale = static_cast<A>(max_norm / (norm + 1e-7));
          for (int64_t d = 0; d < D; ++d) row[d * ws1] = static_cast<scalar_t>(buf[d] * scale);
        }
      }
    });
  });
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("embedding_fwd", &mte::embedding_fwd);
  m.impl("embedding_bwd", &mte::embedding_bwd);
  m.impl("embedding_renorm_", &mte::embedding_renorm_);
}
