// Data movement and the elementwise driver: strided copies (reorders, transposes), row
// gathers (embedding) and the parallel loop around a generated elementwise function (declared
// in cpu_kernels.h).
#include "cpu_kernels.h"
#include "cpu_common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace rtinfer {

namespace {

// -- strided copy -----------------------------------------------------------------------------

constexpr int kMaxRank = 8;

// The copy's geometry after dropping size-1 dims, ordering dims by output stride and merging
// dims that are contiguous in both input and output.
struct CopyGeom {
  int rank = 0;
  int64_t size[kMaxRank], is[kMaxRank], os[kMaxRank];
  int64_t in_off = 0, out_off = 0, elem = 4, total = 0;
  int tdim = -1;  // transpose: the dim (not the last) contiguous in the input
  bool short_rows = false;  // rotated: dim rank-2 is the output's short rows, rank-1 contiguous
};

// An index over the dims [0, n) of a geometry, walked in row-major order.
struct Odometer {
  int n;
  const int64_t *size, *is, *os;
  int64_t idx[kMaxRank] = {};
  int64_t ioff = 0, ooff = 0;

  Odometer(int n_, const int64_t* size_, const int64_t* is_, const int64_t* os_)
      : n(n_), size(size_), is(is_), os(os_) {}
  void seek(int64_t flat) {
    ioff = ooff = 0;
    for (int d = n - 1; d >= 0; --d) {
      idx[d] = flat % size[d];
      flat /= size[d];
      ioff += idx[d] * is[d];
      ooff += idx[d] * os[d];
    }
  }
  void next() {
    for (int d = n - 1; d >= 0; --d) {
      ++idx[d];
      ioff += is[d];
      ooff += os[d];
      if (idx[d] < size[d]) return;
      ioff -= is[d] * size[d];
      ooff -= os[d] * size[d];
      idx[d] = 0;
    }
  }
};

CopyGeom make_copy_geom(int64_t elem, const std::vector<int64_t>& sizes,
                        const std::vector<int64_t>& in_strides, int64_t in_off,
                        const std::vector<int64_t>& out_strides, int64_t out_off) {
  if (sizes.size() > kMaxRank || in_strides.size() != sizes.size() ||
      out_strides.size() != sizes.size())
    throw std::invalid_argument("add_copy: sizes and strides need one entry per dim (rank <= 8)");
  if (elem != 1 && elem != 2 && elem != 4 && elem != 8)
    throw std::invalid_argument("add_copy: elem_size must be 1, 2, 4 or 8");
  CopyGeom g;
  g.elem = elem;
  g.in_off = in_off;
  g.out_off = out_off;
  g.total = 1;
  struct Dim {
    int64_t size, is, os;
  };
  std::vector<Dim> dims;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] < 0) throw std::invalid_argument("add_copy: negative size");
    g.total *= sizes[d];
    if (sizes[d] != 1) dims.push_back({sizes[d], in_strides[d], out_strides[d]});
  }
  if (g.total == 0) return g;
  std::stable_sort(dims.begin(), dims.end(), [](const Dim& a, const Dim& b) {
    return std::llabs(a.os) > std::llabs(b.os);
  });
  std::vector<Dim> merged;
  for (const Dim& d : dims) {
    if (!merged.empty()) {
      Dim& p = merged.back();
      if (p.is == d.is * d.size && p.os == d.os * d.size) {
        p = {p.size * d.size, d.is, d.os};
        continue;
      }
    }
    merged.push_back(d);
  }
  g.rank = (int)merged.size();
  for (int d = 0; d < g.rank; ++d) {
    g.size[d] = merged[d].size;
    g.is[d] = merged[d].is;
    g.os[d] = merged[d].os;
  }
  const int last = g.rank - 1;
  int in_inner = -1;  // the dim (not the last) along which the input is contiguous
  for (int d = 0; d < last; ++d)
    if (g.is[d] == 1 && g.size[d] >= 8) in_inner = d;
  if (in_inner >= 0 && g.os[last] == 1 && g.is[last] != 1 && g.size[last] >= 8) {
    g.tdim = in_inner;
  } else if (in_inner >= 0 && g.size[last] < 8) {
    // the output's rows are short (NCHW -> NHWC with 3 channels): loop along the input's
    // contiguous dim instead, writing with a stride
    std::rotate(g.size + in_inner, g.size + in_inner + 1, g.size + g.rank);
    std::rotate(g.is + in_inner, g.is + in_inner + 1, g.is + g.rank);
    std::rotate(g.os + in_inner, g.os + in_inner + 1, g.os + g.rank);
    g.short_rows = true;
  }
  return g;
}

template <typename T>
void copy_run(const CopyGeom& g, const char* xb, char* yb, int nt) {
  const T* x = reinterpret_cast<const T*>(xb) + g.in_off;
  T* y = reinterpret_cast<T*>(yb) + g.out_off;
  if (g.rank == 0) {
    *y = *x;
    return;
  }
  const int last = g.rank - 1;
  if (g.tdim >= 0) {
    // outer dims: all but tdim and last; tasks: outer index x blocks of 64 along tdim
    int64_t osize[kMaxRank], ois[kMaxRank], oos[kMaxRank];
    int on = 0;
    for (int d = 0; d < last; ++d)
      if (d != g.tdim) {
        osize[on] = g.size[d];
        ois[on] = g.is[d];
        oos[on] = g.os[d];
        ++on;
      }
    int64_t outer = 1;
    for (int d = 0; d < on; ++d) outer *= osize[d];
    const int64_t nt_total = g.size[g.tdim], tb = 64, nblk = (nt_total + tb - 1) / tb;
    const int64_t na = g.size[last], ia = g.is[last], ot = g.os[g.tdim];
    parallel_for(nt, outer * nblk, [&](int64_t b, int64_t e) {
      Odometer od(on, osize, ois, oos);
      od.seek(b / nblk);
      int64_t cur = b / nblk;
      for (int64_t task = b; task < e; ++task) {
        const int64_t o = task / nblk, blk = task % nblk;
        while (cur < o) {
          od.next();
          ++cur;
        }
        const int64_t t0 = blk * tb, tn = std::min(tb, nt_total - t0);
        transpose_block<T>(x + od.ioff + t0, ia, y + od.ooff + t0 * ot, ot, na, tn);
      }
    });
    return;
  }
  if (g.short_rows) {
    // short output rows (NCHW -> NHWC with 3 channels): each task takes a block of positions
    // along the input's contiguous dim and writes their whole rows (every channel), so the
    // writes are contiguous and no two threads write one cache line; split by channel
    // instead, two threads wrote every third float of the same lines (3.5x slower)
    const int s = last - 1;
    int64_t outer = 1;
    for (int d = 0; d < s; ++d) outer *= g.size[d];
    const int64_t n = g.size[last], is = g.is[last], os = g.os[last];
    const int64_t cn = g.size[s], c_is = g.is[s], c_os = g.os[s];
    const int64_t blk = 2048, nblk = (n + blk - 1) / blk;
    parallel_for(nt, outer * nblk, [&](int64_t b, int64_t e) {
      Odometer od(s, g.size, g.is, g.os);
      int64_t cur = b / nblk;
      od.seek(cur);
      for (int64_t task = b; task < e; ++task) {
        for (; cur < task / nblk; ++cur) od.next();
        const int64_t j0 = task % nblk * blk, m = std::min(n, j0 + blk) - j0;
        const T* xi = x + od.ioff + j0 * is;
        T* yo = y + od.ooff + j0 * os;
        for (int64_t j = 0; j < m; ++j)
          for (int64_t c = 0; c < cn; ++c) yo[j * os + c * c_os] = xi[j * is + c * c_is];
      }
    });
    return;
  }
  int64_t outer = 1;
  for (int d = 0; d < last; ++d) outer *= g.size[d];
  const int64_t n = g.size[last], is = g.is[last], os = g.os[last];
  // few long rows (a 3-channel image's planes): split them too, or a thread gets 2 of 3
  int64_t pieces = 1;
  if (outer < 4 * nt)
    pieces = std::max<int64_t>(1, std::min((n + 1023) / 1024, (4 * nt + outer - 1) / outer));
  const int64_t piece = (n + pieces - 1) / pieces;
  parallel_for(nt, outer * pieces, [&](int64_t b, int64_t e) {
    Odometer od(last, g.size, g.is, g.os);
    int64_t cur = b / pieces;
    od.seek(cur);
    for (int64_t task = b; task < e; ++task) {
      for (; cur < task / pieces; ++cur) od.next();
      const int64_t j0 = task % pieces * piece, m = std::min(n, j0 + piece) - j0;
      const T* xi = x + od.ioff + j0 * is;
      T* yo = y + od.ooff + j0 * os;
      if (m <= 0) {
        continue;
      } else if (is == 1 && os == 1) {
        std::memcpy(yo, xi, m * sizeof(T));
      } else if (is == 0 && os == 1) {
        const T v = *xi;
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) yo[j] = v;
      } else {
        for (int64_t j = 0; j < m; ++j) yo[j * os] = xi[j * is];
      }
    }
  });
}

}  // namespace

void add_embedding(Plan& p, const std::string& name, int weight, int indices, int y,
                   int64_t num_indices, int64_t dim, int64_t vocab,
                   torch::ScalarType index_dtype, int64_t elem_size, bool allow_negative) {
  if (index_dtype != torch::kLong && index_dtype != torch::kInt)
    throw std::invalid_argument(name + ": embedding indices must be int64 or int32");
  const bool i64 = index_dtype == torch::kLong;
  const int64_t row = dim * elem_size;
  const int64_t lo = allow_negative ? -vocab : 0;
  p.add_step({name, [=](Ctx& ctx) {
    const char* w = ctx.ptr[weight];
    char* out = ctx.ptr[y];
    auto index = [&](int64_t i) -> int64_t {
      return i64 ? ctx.at<int64_t>(indices)[i] : (int64_t)ctx.at<int32_t>(indices)[i];
    };
    for (int64_t i = 0; i < num_indices; ++i) {  // check first: no exception leaves a thread
      const int64_t ix = index(i);
      if (ix < lo || ix >= vocab)
        throw std::out_of_range(name + ": index " + std::to_string(ix) + " (at position " +
                                std::to_string(i) + ") is out of range for " +
                                std::to_string(vocab) + " rows (allowed: [" +
                                std::to_string(lo) + ", " + std::to_string(vocab - 1) + "])");
    }
    parallel_for(threads_for(ctx, num_indices * row / 4), num_indices, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        int64_t ix = index(i);
        if (ix < 0) ix += vocab;
        std::memcpy(out + i * row, w + ix * row, row);
      }
    });
  }});
}

void add_copy(Plan& p, const std::string& name, int x, int y, int64_t elem_size,
              std::vector<int64_t> sizes, std::vector<int64_t> in_strides, int64_t in_offset,
              std::vector<int64_t> out_strides, int64_t out_offset) {
  auto G = std::make_shared<CopyGeom>(
      make_copy_geom(elem_size, sizes, in_strides, in_offset, out_strides, out_offset));
  p.add_step({name, [G, x, y](Ctx& ctx) {
    const CopyGeom& g = *G;
    if (g.total == 0) return;
    const int nt = threads_for(ctx, g.total * g.elem / 4, 32768);
    switch (g.elem) {
      case 1: copy_run<uint8_t>(g, ctx.ptr[x], ctx.ptr[y], nt); break;
      case 2: copy_run<uint16_t>(g, ctx.ptr[x], ctx.ptr[y], nt); break;
      case 4: copy_run<uint32_t>(g, ctx.ptr[x], ctx.ptr[y], nt); break;
      default: copy_run<uint64_t>(g, ctx.ptr[x], ctx.ptr[y], nt); break;
    }
  }});
}

void add_elementwise(Plan& p, const std::string& name, uintptr_t fn, std::vector<int> inputs,
                     int y, int64_t n) {
  if (fn == 0) throw std::invalid_argument(name + ": null elementwise function");
  const auto f = reinterpret_cast<ElementwiseFn>(fn);
  p.add_step({name, [f, inputs, y, n](Ctx& ctx) {
    constexpr size_t kStack = 32;
    const char* stack[kStack];
    std::vector<const char*> heap;
    const char** ins = stack;
    if (inputs.size() > kStack) {
      heap.resize(inputs.size());
      ins = heap.data();
    }
    for (size_t i = 0; i < inputs.size(); ++i) ins[i] = ctx.ptr[inputs[i]];
    char* out = ctx.ptr[y];
    const int nt = threads_for(ctx, n);
    if (nt <= 1) {
      f(ins, out, 0, n);
      return;
    }
    // chunks of whole 64-element blocks, so no two threads write one cache line
    const int64_t blocks = (n + 63) / 64;
    parallel_for(nt, blocks, [&](int64_t b, int64_t e) {
      f(ins, out, b * 64, std::min(n, e * 64));
    });
  }});
}

}  // namespace rtinfer
