// The CPU N-body op: row tiles of the Gram matrix through BLAS, pairs i <= j only, the pair weights in
// place, then the pull products. See nbody_cpu_impl.
#include "nbody_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "nbody.h"
#include "nbody_cpu_weights.h"

namespace pedcc {
namespace {

// Rows per tile: the (rows x C) weight tile stays near 32 MB whatever C is, so memory is O(C*d).
int64_t rows_per_tile(int64_t C, int64_t elem_size) {
  const int64_t budget = int64_t(32) << 20;
  return std::max<int64_t>(16, std::min<int64_t>(1024, budget / std::max<int64_t>(1, C * elem_size)));
}

// The branch-free loop of nbody_cpu_weights.cpp for a float tile (values, or bf16 bits).
inline void weigh_row_flat(float* row, int64_t n, int64_t self, int kind, float param, float pair_shift, float* cmax,
                           float* csum, float* best, float* energy) {
  weigh_row_float(kind, row, n, self, param, pair_shift, cmax, csum, best, energy);
}

inline void weigh_row_flat(at::BFloat16* row, int64_t n, int64_t self, int kind, float param, float pair_shift,
                           float* cmax, float* csum, float* best, float* energy) {
  weigh_row_bf16(kind, reinterpret_cast<uint16_t*>(row), n, self, param, pair_shift, cmax, csum, best, energy);
}

// Overwrites a (rows x width) Gram tile, rows r0.. against columns r0.. (kept as S: T, or bf16 with
// bf16 operands: no conversion pass either way), by the pair weights phi'(c), 0 on the diagonal. The
// tile holds c - gram_offset. Each row's largest cosine and energy over the tile are merged into
// row_max / row_energy. Columns j >= rows (the points right of the tile's diagonal block, which no
// later tile pairs with these rows) merge theirs into col_max / col_energy (arrays starting at
// column `rows`): the pair (i, j) counts for both of its points.
template <typename T, typename S>
void weigh_tile(S* wp, int64_t rows, int64_t width, int kind, T param, T pair_shift, T gram_offset, T* row_max,
                T* row_energy, T* col_max, T* col_energy) {
  const int64_t blocks = (width + kColumnBlock - 1) / kColumnBlock;
  std::vector<T> part_max(blocks * rows), part_energy(blocks * rows);
  const T lowest = -std::numeric_limits<T>::infinity();
  const bool flat = std::is_same<T, float>::value && has_flat_potential(kind);  // float64 keeps the generic loop
  at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
    T cmax[kColumnBlock], csum[kColumnBlock];
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t j0 = b * kColumnBlock, n = std::min(kColumnBlock, width - j0);
      std::fill(cmax, cmax + n, lowest);
      std::fill(csum, csum + n, T(0));
      for (int64_t i = 0; i < rows; ++i) {
        S* row = wp + i * width + j0;
        T best = lowest, e_sum = 0;
        const int64_t self = i >= j0 && i < j0 + n ? i - j0 : -1;
        if constexpr (std::is_same<T, float>::value) {
          if (flat) {
            weigh_row_flat(row, n, self, kind, param, pair_shift, cmax, csum, &best, &e_sum);
            part_max[b * rows + i] = best;
            part_energy[b * rows + i] = e_sum;
            continue;
          }
        }
        for (int64_t k = 0; k < n; ++k) {
          if (k == self) {
            row[k] = S(0);
            continue;
          }
          const T c = static_cast<T>(row[k]);
          T phi, dphi;
          pair_potential<T>(kind, param, pair_shift, c, &phi, &dphi);
          row[k] = static_cast<S>(dphi);
          best = c > best ? c : best;
          e_sum += phi;
          cmax[k] = c > cmax[k] ? c : cmax[k];
          csum[k] += phi;
        }
        part_max[b * rows + i] = best;
        part_energy[b * rows + i] = e_sum;
      }
      for (int64_t k = std::max<int64_t>(0, rows - j0); k < n; ++k) {
        const int64_t j = j0 + k - rows;
        col_max[j] = std::max(col_max[j], cmax[k] + gram_offset);
        col_energy[j] += csum[k];
      }
    }
  });
  for (int64_t i = 0; i < rows; ++i) {  // blocks in order: the sums do not depend on the threads
    T best = lowest, e_sum = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      best = std::max(best, part_max[b * rows + i]);
      e_sum += part_energy[b * rows + i];
    }
    row_max[i] = std::max(row_max[i], best + gram_offset);
    row_energy[i] += e_sum;
  }
}

// One pass over the pairs (i <= j) in row tiles: the Gram tile of rows r0.. against columns r0..
// (the upper triangle, half the products of the full matrix), the pair weights in place, then the pull
// sum_j phi'(c_ij) x_j of both sides, rows from the whole tile and columns j >= r0 + rows from its
// part right of the diagonal block (the diagonal block is square: its pairs reach both points as rows).
// Operands of the Gram product: T (exact), bf16 (about 1e-4 on the cosines), or split bf16:
// x = hi + lo, both bf16, and [hi, hi, lo] . [hi, lo, hi] (one product, three times as deep) gives
// the cosines to about 1e-6 (lo . lo and the rounding of lo are what is left). The pull product takes
// bf16 operands in both bf16 modes: its weights are bf16 already.
template <typename T>
void nbody_cpu_impl(const at::Tensor& X, int kind, T param, T shift, int operands, at::Tensor& forces,
                    at::Tensor& max_cos, at::Tensor& energy) {
  const int64_t C = X.size(0), d = X.size(1);
  const bool bf16 = operands != kExactOperands;
  const int64_t tile = rows_per_tile(C, bf16 ? 2 : sizeof(T));
  const at::Tensor hi = bf16 ? X.to(at::kBFloat16) : X;  // the pull's operand
  std::vector<at::Tensor> left = {hi}, right = {hi};  // the Gram product's features, joined once below
  if (operands == kSplitBf16Operands) {
    const at::Tensor lo = (X - hi.to(X.scalar_type())).to(at::kBFloat16);
    left = {hi, hi, lo};
    right = {hi, lo, hi};
  }
  // A bf16 product also comes back in bf16, rounded to 2^-9 of its value. For a shifted lse extra
  // features (-shift on the left, 1 on the right) make the product c - shift instead: then the
  // rounding is relative to the distance from the shift, small exactly for the pairs whose weights
  // count (near the largest cosine at a small temperature). Split operands split the shift too. A
  // shift outside [-1, 1] is no cosine: the product c - shift would lose more than c itself.
  T gram_offset = 0;  // what the product lacks of the cosine: c = product + gram_offset
  if (bf16 && kind == kLse && shift != 0 && std::abs(shift) <= T(1)) {
    const float shift_hi = static_cast<float>(c10::BFloat16(static_cast<float>(shift)));
    std::vector<double> offsets = {shift_hi};
    if (operands == kSplitBf16Operands) {
      offsets.push_back(static_cast<float>(c10::BFloat16(static_cast<float>(shift - T(shift_hi)))));
    }
    for (const double offset : offsets) {
      gram_offset += static_cast<T>(offset);
      left.push_back(at::full({C, 1}, -offset, hi.options()));
      right.push_back(at::ones({C, 1}, hi.options()));
    }
  }
  const at::Tensor gram_left = left.size() == 1 ? hi : at::cat(left, 1);
  const at::Tensor gram_right = right.size() == 1 ? hi : at::cat(right, 1);
  const T pair_shift = shift - gram_offset;
  max_cos.fill_(-std::numeric_limits<double>::infinity());
  energy.zero_();
  at::Tensor pull = at::zeros_like(X);
  T* mp = max_cos.data_ptr<T>();
  T* ep = energy.data_ptr<T>();
  for (int64_t r0 = 0; r0 < C; r0 += tile) {
    const int64_t rows = std::min(tile, C - r0), width = C - r0, beyond = width - rows;
    at::Tensor W = at::mm(gram_left.narrow(0, r0, rows), gram_right.narrow(0, r0, width).t());
    if (bf16) {
      weigh_tile<T>(W.data_ptr<at::BFloat16>(), rows, width, kind, param, pair_shift, gram_offset, mp + r0, ep + r0,
                    mp + r0 + rows, ep + r0 + rows);
    } else {
      weigh_tile<T>(W.data_ptr<T>(), rows, width, kind, param, pair_shift, gram_offset, mp + r0, ep + r0,
                    mp + r0 + rows, ep + r0 + rows);
    }
    pull.narrow(0, r0, rows).add_(at::mm(W, hi.narrow(0, r0, width)));
    if (beyond > 0) {
      pull.narrow(0, r0 + rows, beyond).add_(at::mm(W.narrow(1, rows, beyond).t(), hi.narrow(0, r0, rows)));
    }
  }
  const T* xp = X.data_ptr<T>();
  const T* ap = pull.data_ptr<T>();
  T* fp = forces.data_ptr<T>();
  at::parallel_for(0, C, 16, [&](int64_t lo, int64_t hi_row) {
    for (int64_t i = lo; i < hi_row; ++i) {
      const T* a = ap + i * d;
      const T* x = xp + i * d;
      T radial = 0;
      for (int64_t k = 0; k < d; ++k) radial += a[k] * x[k];
      T* f = fp + i * d;
      for (int64_t k = 0; k < d; ++k) f[k] = -(a[k] - radial * x[k]);
    }
  });
}

}  // namespace

void nbody_forces_cpu_impl(const at::Tensor& X, int kind, double param, double shift, int operands,
                           at::Tensor& forces, at::Tensor& max_cos, at::Tensor& energy) {
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "nbody_forces_cpu", [&] {
    nbody_cpu_impl<scalar_t>(X, kind, static_cast<scalar_t>(param), static_cast<scalar_t>(shift), operands, forces,
                             max_cos, energy);
  });
}

}  // namespace pedcc
