// TORCH_LIBRARY(pedcc): op schemas, the CPU kernels and the CUDA dispatch glue. All torch code of
// the extension lives here; the CUDA kernels (nbody.cu) only see raw pointers.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "nbody.h"

#ifdef PEDCC_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

// The module only exists so that `import pedcc_kernels._C` loads the library and runs the
// TORCH_LIBRARY registrations below; the ops are reached through torch.ops.pedcc.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

namespace pedcc {
namespace {

// Numbers in error messages are formatted here, not streamed into the message: on the H200 machine
// (torch 2.11, extension built there), every check whose message streamed a double or a shape
// (c10::str, an std::ostringstream) crashed the process with a segfault while the ones streaming
// only strings raised cleanly. snprintf needs no iostream locale.
std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", v);
  return text;
}

std::string shape_of(const at::Tensor& t) {
  std::string text = "(";
  for (int64_t i = 0; i < t.dim(); ++i) text += (i ? ", " : "") + std::to_string(t.size(i));
  return text + (t.dim() == 1 ? ",)" : ")");
}

int parse_potential(c10::string_view name, double param, double shift) {
  const std::string p(name);
  TORCH_CHECK_VALUE(p == "lse" || shift == 0,
                    "nbody_forces: shift only applies to the 'lse' potential, got shift=", number(shift), " with '", p,
                    "'");
  TORCH_CHECK_VALUE(std::isfinite(shift), "nbody_forces: shift must be finite, got ", number(shift));
  if (p == "coulomb") return kCoulomb;
  if (p == "riesz") {
    TORCH_CHECK_VALUE(param > 0, "nbody_forces: param (the Riesz exponent s) must be > 0, got ", number(param));
    return kRiesz;
  }
  if (p == "lse") {
    TORCH_CHECK_VALUE(param > 0, "nbody_forces: param (the temperature t) must be > 0, got ", number(param));
    return kLse;
  }
  if (p == "hinge") {
    TORCH_CHECK_VALUE(param >= -1 && param <= 1,
                      "nbody_forces: param (the target cosine tau) must lie in [-1, 1], got ", number(param));
    return kHinge;
  }
  TORCH_CHECK_VALUE(false, "nbody_forces: potential must be 'coulomb', 'riesz', 'lse' or 'hinge', got '", p,
                    "'");
  return -1;
}

// 'auto' is the SIMT kernel: on an H200 (benchmarks/results, 2026-11-28) the first tensor-core kernel
// (tf32 WMMA, accumulator in shared memory) matched the CPU op but ran 2.5x slower than SIMT at
// C=100000, d=512, so it did not become the default. Its bf16 successor (accumulator in registers)
// becomes the default only once a GPU run has matched and timed it; the optimisers use the Triton
// kernel (pedcc_kernels/kernels/nbody_sweep.py) meanwhile.
// On CPU, 'tensor_core' runs both products with bf16 operands (oneDNN: AVX512-BF16/AMX where the
// CPU has them; benchmarks/results has the op at 2.2x its fp32 rate on a 2-core AMD EPYC), and
// 'bf16x3' (CPU only) takes the Gram product from split operands, hi + lo (see nbody_cpu_impl).
enum Operands { kExactOperands = 0, kBf16Operands = 1, kSplitBf16Operands = 2 };

int parse_impl(c10::string_view name) {
  const std::string s(name);
  if (s == "auto" || s == "simt") return kExactOperands;
  if (s == "tensor_core") return kBf16Operands;
  if (s == "bf16x3") return kSplitBf16Operands;
  TORCH_CHECK_VALUE(false, "nbody_forces: impl must be 'auto', 'simt', 'tensor_core' or 'bf16x3', got '", s, "'");
  return -1;
}

void check_points(const at::Tensor& points) {
  TORCH_CHECK_VALUE(points.dim() == 2, "nbody_forces: points must be 2-D (C, d), got shape ",
                    shape_of(points));
  TORCH_CHECK_VALUE(points.size(0) >= 1 && points.size(1) >= 1,
                    "nbody_forces: points must be non-empty, got shape ", shape_of(points));
}

// Rows per tile: the (rows x C) weight tile stays near 32 MB whatever C is, so memory is O(C*d).
int64_t rows_per_tile(int64_t C, int64_t elem_size) {
  const int64_t budget = int64_t(32) << 20;
  return std::max<int64_t>(16, std::min<int64_t>(1024, budget / std::max<int64_t>(1, C * elem_size)));
}

// Columns per task of weigh_tile: each task owns whole columns, so their statistics need no merge.
constexpr int64_t kColumnBlock = 256;

// In float, the lse potential (the optimisers'), Coulomb's (the charge model's) and the hinge have a
// branch-free loop below: expf and powf are library calls that no loop vectorises, and near the
// maximum whether a pair's lse exponent underflows is a coin toss per pair, so branches mispredict.
// On x86-64 Linux the loop is compiled for AVX-512, AVX2 and the baseline, picked when the library
// loads (GCC/Clang function multiversioning). Riesz (powf) keeps the generic loop.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define PEDCC_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PEDCC_CPU_CLONES
#endif

inline float float_from_bits(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

inline uint32_t bits_of(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

// Round to nearest even, NaN kept: what c10::BFloat16(float) does, as plain integer arithmetic.
inline uint16_t bf16_bits(float v) {
  const uint32_t b = bits_of(v);
  const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
  return v == v ? static_cast<uint16_t>(rounded) : uint16_t(0x7FC0);
}

// e^u for u in [kLseExponentFloor, kLseExponentCap], within about 2 ulp of expf: u = n ln2 + r with
// |r| <= ln2 / 2 (ln2 in two parts, Cody and Waite), e^r by its Taylor polynomial of degree 7
// (remainder below 1e-8), 2^n from the exponent bits.
inline float exp_in_range(float u) {
  const float round = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (u * 1.44269504f + round) - round;
  const float r = (u - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * float_from_bits(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
}

// pair_potential without branches, for Kind in {kLse, kCoulomb, kHinge}; NaN in gives NaN out.
template <int Kind>
inline __attribute__((always_inline)) void pair_potential_flat(float c, float param, float shift, float top,
                                                               float* phi, float* dphi) {
  if constexpr (Kind == kLse) {
    const float cap = static_cast<float>(kLseExponentCap), floor = kLseExponentFloor;
    const float u = (c - shift) / param;
    const bool number = u == u;  // NaN flows through the selects, not through exp_in_range
    const float e = exp_in_range(u > cap ? cap : (u < floor ? floor : (number ? u : 0.0f)));
    *phi = u > cap ? top * (1.0f + u - cap) : (u < floor ? 0.0f : (number ? e : u));
    *dphi = u > cap ? top / param : (u < floor ? 0.0f : (number ? e / param : u));
  } else if constexpr (Kind == kCoulomb) {
    const float floor = static_cast<float>(kMinSquaredDistance);
    float r2 = 2.0f - 2.0f * c;
    r2 = r2 < floor ? floor : r2;
    const float e = 1.0f / std::sqrt(r2);
    *phi = e;
    *dphi = e / r2;
  } else {
    const float excess = c - param;
    const float positive = excess > 0.0f || excess != excess ? excess : 0.0f;
    *phi = positive * positive;
    *dphi = 2.0f * positive;
  }
}

// One row's n cosines of the tile (c - gram_offset; shift is the pair shift), weights written over
// them, the row's largest cosine and energy returned and the columns' merged into cmax / csum.
// `self` is the diagonal's index in the segment (or -1). The row's statistics are kept per lane of
// 16 columns (one vector on AVX-512) and merged at the end, so no loop carries a reduction.
constexpr int kLanes = 16;

template <int Kind>
inline __attribute__((always_inline)) void weigh_pair(float* __restrict__ row, int64_t k, int64_t self, float param,
                                                      float shift, float top, float* __restrict__ cmax,
                                                      float* __restrict__ csum, float& best, float& total) {
  const float lowest = -std::numeric_limits<float>::infinity();
  const float c = row[k];
  float phi, dphi;
  pair_potential_flat<Kind>(c, param, shift, top, &phi, &dphi);
  const bool pair = k != self;
  phi = pair ? phi : 0.0f;
  row[k] = pair ? dphi : 0.0f;
  const float cos = pair ? c : lowest;
  best = cos > best ? cos : best;
  total += phi;
  cmax[k] = cos > cmax[k] ? cos : cmax[k];
  csum[k] += phi;
}

template <int Kind>
inline __attribute__((always_inline)) void weigh_row(float* __restrict__ row, int64_t n, int64_t self, float param,
                                                     float shift, float* __restrict__ cmax, float* __restrict__ csum,
                                                     float* row_best, float* row_energy) {
  float best[kLanes], total[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    best[l] = -std::numeric_limits<float>::infinity();
    total[l] = 0.0f;
  }
  const float top = std::exp(static_cast<float>(kLseExponentCap));  // where lse continues linearly
  int64_t k0 = 0;
  for (; k0 + kLanes <= n; k0 += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      weigh_pair<Kind>(row, k0 + l, self, param, shift, top, cmax, csum, best[l], total[l]);
    }
  }
  for (int64_t k = k0; k < n; ++k) {
    weigh_pair<Kind>(row, k, self, param, shift, top, cmax, csum, best[k - k0], total[k - k0]);
  }
  float b = best[0], t = total[0];
  for (int l = 1; l < kLanes; ++l) {
    b = best[l] > b ? best[l] : b;
    t += total[l];
  }
  *row_best = b;
  *row_energy = t;
}

bool has_flat_potential(int kind) { return kind == kLse || kind == kCoulomb || kind == kHinge; }

inline __attribute__((always_inline)) void weigh_row_flat(int kind, float* row, int64_t n, int64_t self, float param,
                                                          float shift, float* cmax, float* csum, float* row_best,
                                                          float* row_energy) {
  if (kind == kLse) {
    weigh_row<kLse>(row, n, self, param, shift, cmax, csum, row_best, row_energy);
  } else if (kind == kCoulomb) {
    weigh_row<kCoulomb>(row, n, self, param, shift, cmax, csum, row_best, row_energy);
  } else {
    weigh_row<kHinge>(row, n, self, param, shift, cmax, csum, row_best, row_energy);
  }
}

PEDCC_CPU_CLONES void weigh_row_float(int kind, float* row, int64_t n, int64_t self, float param, float shift,
                                      float* cmax, float* csum, float* row_best, float* row_energy) {
  weigh_row_flat(kind, row, n, self, param, shift, cmax, csum, row_best, row_energy);
}

// bf16 tiles go through a float copy of the segment (n <= kColumnBlock): loops that mix 16- and
// 32-bit lanes with the potential's selects did not vectorise (GCC 12), these three do.
PEDCC_CPU_CLONES void weigh_row_bf16(int kind, uint16_t* __restrict__ row, int64_t n, int64_t self, float param,
                                     float shift, float* cmax, float* csum, float* row_best, float* row_energy) {
  float values[kColumnBlock];
  for (int64_t k = 0; k < n; ++k) values[k] = float_from_bits(uint32_t(row[k]) << 16);
  weigh_row_flat(kind, values, n, self, param, shift, cmax, csum, row_best, row_energy);
  for (int64_t k = 0; k < n; ++k) row[k] = bf16_bits(values[k]);
}

// The branch-free loop where there is one (float, a potential without powf), else false.
template <typename T, typename S>
bool weigh_row_fast(S* row, int64_t n, int64_t self, int kind, T param, T pair_shift, T* cmax, T* csum, T* best,
                    T* energy) {
  if constexpr (std::is_same<T, float>::value && std::is_same<S, float>::value) {
    if (has_flat_potential(kind)) weigh_row_float(kind, row, n, self, param, pair_shift, cmax, csum, best, energy);
    return has_flat_potential(kind);
  } else if constexpr (std::is_same<T, float>::value && std::is_same<S, at::BFloat16>::value) {
    if (has_flat_potential(kind)) {
      weigh_row_bf16(kind, reinterpret_cast<uint16_t*>(row), n, self, param, pair_shift, cmax, csum, best, energy);
    }
    return has_flat_potential(kind);
  } else {
    return false;
  }
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
        if (weigh_row_fast<T, S>(row, n, self, kind, param, pair_shift, cmax, csum, &best, &e_sum)) {
          part_max[b * rows + i] = best;
          part_energy[b * rows + i] = e_sum;
          continue;
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
  at::Tensor left = hi, right = hi;
  if (operands == kSplitBf16Operands) {
    const at::Tensor lo = (X - hi.to(X.scalar_type())).to(at::kBFloat16);
    left = at::cat({hi, hi, lo}, 1);
    right = at::cat({hi, lo, hi}, 1);
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
      left = at::cat({left, at::full({C, 1}, -offset, left.options())}, 1);
      right = at::cat({right, at::ones({C, 1}, right.options())}, 1);
    }
  }
  const T pair_shift = shift - gram_offset;
  max_cos.fill_(-std::numeric_limits<double>::infinity());
  energy.zero_();
  at::Tensor pull = at::zeros_like(X);
  T* mp = max_cos.data_ptr<T>();
  T* ep = energy.data_ptr<T>();
  for (int64_t r0 = 0; r0 < C; r0 += tile) {
    const int64_t rows = std::min(tile, C - r0), width = C - r0, beyond = width - rows;
    at::Tensor W = at::mm(left.narrow(0, r0, rows), right.narrow(0, r0, width).t());
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> nbody_forces_cpu(const at::Tensor& points,
                                                                 c10::string_view potential, double param,
                                                                 c10::string_view impl, double shift) {
  check_points(points);
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
                   "nbody_forces: points must be float32 or float64 on CPU, got ", points.scalar_type());
  const int kind = parse_potential(potential, param, shift);
  const int operands = parse_impl(impl);
  const at::Tensor X = points.contiguous();
  at::Tensor forces = at::empty_like(X);
  at::Tensor max_cos = at::empty({X.size(0)}, X.options());
  at::Tensor energy = at::empty({X.size(0)}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "nbody_forces_cpu", [&] {
    nbody_cpu_impl<scalar_t>(X, kind, static_cast<scalar_t>(param), static_cast<scalar_t>(shift), operands, forces,
                             max_cos, energy);
  });
  return {forces, max_cos, energy};
}

#ifdef PEDCC_WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> nbody_forces_cuda_op(const at::Tensor& points,
                                                                    c10::string_view potential,
                                                                    double param, c10::string_view impl,
                                                                    double shift) {
  check_points(points);
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat, "nbody_forces: points must be float32 on CUDA, got ",
                   points.scalar_type());
  const int kind = parse_potential(potential, param, shift);
  const int impl_id = parse_impl(impl);
  TORCH_CHECK_VALUE(impl_id != kSplitBf16Operands,
                    "nbody_forces: impl 'bf16x3' is CPU-only; on CUDA use 'simt' (fp32), 'tensor_core' or 'triton'");
  const c10::cuda::CUDAGuard guard(points.device());
  const at::Tensor X = points.contiguous();
  at::Tensor forces = at::empty_like(X);
  at::Tensor max_cos = at::empty({X.size(0)}, X.options());
  at::Tensor energy = at::empty({X.size(0)}, X.options());
  const int64_t C = X.size(0), d = X.size(1);
  void* stream = at::cuda::getCurrentCUDAStream().stream();
  int err = 0;
  if (impl_id == kBf16Operands && nbody_tc_usable(d)) {
    int64_t rows = 0, cols = 0;
    nbody_tc_operand_shape(C, d, &rows, &cols);
    // The bf16 operands, rounded to nearest even like the CPU op's and the Triton kernel's.
    at::Tensor operands = at::zeros({rows, cols}, X.options().dtype(at::kBFloat16));
    operands.narrow(0, 0, C).narrow(1, 0, d).copy_(X);
    err = nbody_forces_cuda_tc(X.data_ptr<float>(), operands.data_ptr(), C, d, kind, static_cast<float>(param),
                               static_cast<float>(shift), forces.data_ptr<float>(), max_cos.data_ptr<float>(),
                               energy.data_ptr<float>(), stream);
  } else {
    err = nbody_forces_cuda_simt(X.data_ptr<float>(), C, d, kind, static_cast<float>(param),
                                 static_cast<float>(shift), forces.data_ptr<float>(), max_cos.data_ptr<float>(),
                                 energy.data_ptr<float>(), stream);
  }
  TORCH_CHECK(err == 0, "nbody_forces: CUDA launch failed: ", nbody_cuda_error_string(err));
  return {forces, max_cos, energy};
}
#endif

}  // namespace

TORCH_LIBRARY(pedcc, m) {
  m.def(
      "nbody_forces(Tensor points, str potential, float param, str impl='auto', float shift=0.0) -> "
      "(Tensor forces, Tensor max_cos, Tensor energy)");
}

TORCH_LIBRARY_IMPL(pedcc, CPU, m) { m.impl("nbody_forces", &nbody_forces_cpu); }

#ifdef PEDCC_WITH_CUDA
TORCH_LIBRARY_IMPL(pedcc, CUDA, m) { m.impl("nbody_forces", &nbody_forces_cuda_op); }
#endif

}  // namespace pedcc
