// The branch-free weighing loop of the CPU N-body op (declared in nbody_cpu_weights.h).
#include "nbody_cpu_weights.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "nbody.h"

namespace pedcc {
namespace {

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

}  // namespace

bool has_flat_potential(int kind) { return kind == kLse || kind == kCoulomb || kind == kHinge; }

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

}  // namespace pedcc
