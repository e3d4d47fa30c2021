// CUDA kernels of the N-body force op (DESIGN §3) on raw pointers; no torch headers.
//
// For unit rows x_i the op is attention-shaped with Q = K = V = X: a row block of X meets every
// column tile of X, the Gram tile G = X_rows X_cols^T is turned into pair weights W = phi'(G) (diagonal
// and padding set to 0), and the force accumulator a_i = sum_j W_ij x_j grows by W X_cols. Per-row max
// cosine and energy are reduced while W is formed, and after the last tile each row is projected on
// the tangent space: F_i = -(a_i - (a_i . x_i) x_i). Nothing of size C x C is ever stored.
//
// Two variants:
//   simt         fp32 FMA on CUDA cores (GPU Gems 3 ch. 31 style tiling), any d. The accumulator of a
//                block's rows lives in the forces buffer itself: each element is owned by exactly one
//                thread for the whole kernel, so the read-modify-write needs no synchronisation.
//   tensor_core  both products on tensor cores (mma.sync m16n8k16, bf16 operands, fp32 accumulation),
//                the accumulator in registers, d <= 864 on an H100 (see below); larger d, or a GPU
//                before sm_80, runs simt.
#include <cuda_runtime.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "nbody.h"

namespace pedcc {
namespace {

// ---------------------------------------------------------------------------------------------
// simt: 256 threads as a 16 x 16 grid; thread (ty, tx) owns rows ty + 16p and columns tx + 16q
// (p, q < 4) of every 64 x 64 tile, so consecutive threads touch consecutive addresses.
constexpr int kSimtRows = 64;      // rows i per block
constexpr int kSimtCols = 64;      // columns j per tile
constexpr int kSimtDepth = 16;     // feature slice per step of the Gram product
constexpr int kSimtFeatures = 64;  // feature slice per step of the force product
constexpr int kSimtThreads = 256;
constexpr int kSimtSide = 16;
constexpr int kSimtMicro = 4;
static_assert(kSimtRows == kSimtCols, "the Gram slices are loaded by one loop over rows_s and cols_s");
static_assert(kSimtRows == kSimtSide * kSimtMicro && kSimtThreads == kSimtSide * kSimtSide, "thread grid");

__device__ __forceinline__ float max_keep_first(float best, float c) { return c > best ? c : best; }

// One warp projects a_i on the tangent space at x_i, in place: a_i <- -(a_i - (a_i . x_i) x_i).
__device__ __forceinline__ void project_row_on_tangent(float* a, const float* xi, int64_t d, int lane) {
  float radial = 0.f;
  for (int64_t k = lane; k < d; k += 32) radial = fmaf(a[k], xi[k], radial);
  for (int offset = 16; offset > 0; offset /= 2) radial += __shfl_xor_sync(0xffffffffu, radial, offset);
  for (int64_t k = lane; k < d; k += 32) a[k] = -(a[k] - radial * xi[k]);
}

__global__ void __launch_bounds__(kSimtThreads)
nbody_simt_kernel(const float* __restrict__ x, int64_t C, int64_t d, int kind, float param, float shift,
                  float* __restrict__ forces, float* __restrict__ max_cos, float* __restrict__ energy) {
  // Transposed slices ([k][row]) so that the Gram loop reads a row of shared memory per k; the +1
  // column spreads the transposing stores over the banks.
  __shared__ float rows_s[kSimtDepth][kSimtRows + 1];
  __shared__ float cols_s[kSimtDepth][kSimtCols + 1];
  __shared__ float weight_s[kSimtRows][kSimtCols + 1];
  __shared__ float feat_s[kSimtCols][kSimtFeatures];

  const int tid = threadIdx.x;
  const int tx = tid % kSimtSide, ty = tid / kSimtSide;
  const int64_t row0 = int64_t(blockIdx.x) * kSimtRows;

  float best[kSimtMicro], e_sum[kSimtMicro];
#pragma unroll
  for (int p = 0; p < kSimtMicro; ++p) {
    best[p] = -INFINITY;
    e_sum[p] = 0.f;
  }

  for (int64_t col0 = 0; col0 < C; col0 += kSimtCols) {
    float gram[kSimtMicro][kSimtMicro] = {};
    for (int64_t k0 = 0; k0 < d; k0 += kSimtDepth) {
      for (int e = tid; e < kSimtRows * kSimtDepth; e += kSimtThreads) {
        const int r = e / kSimtDepth, k = e % kSimtDepth;
        const int64_t gk = k0 + k, gi = row0 + r, gj = col0 + r;
        rows_s[k][r] = (gi < C && gk < d) ? x[gi * d + gk] : 0.f;
        cols_s[k][r] = (gj < C && gk < d) ? x[gj * d + gk] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kSimtDepth; ++k) {
        float a[kSimtMicro], b[kSimtMicro];
        for (int p = 0; p < kSimtMicro; ++p) a[p] = rows_s[k][ty + kSimtSide * p];
        for (int q = 0; q < kSimtMicro; ++q) b[q] = cols_s[k][tx + kSimtSide * q];
        for (int p = 0; p < kSimtMicro; ++p)
          for (int q = 0; q < kSimtMicro; ++q) gram[p][q] = fmaf(a[p], b[q], gram[p][q]);
      }
      __syncthreads();
    }

#pragma unroll
    for (int p = 0; p < kSimtMicro; ++p) {
      for (int q = 0; q < kSimtMicro; ++q) {
        const int r = ty + kSimtSide * p, c = tx + kSimtSide * q;
        const int64_t gi = row0 + r, gj = col0 + c;
        float w = 0.f;
        if (gi < C && gj < C && gi != gj) {
          float phi, dphi;
          pair_potential<float>(kind, param, shift, gram[p][q], &phi, &dphi);
          best[p] = max_keep_first(best[p], gram[p][q]);
          e_sum[p] += phi;
          w = dphi;
        }
        weight_s[r][c] = w;
      }
    }
    __syncthreads();

    for (int64_t f0 = 0; f0 < d; f0 += kSimtFeatures) {
      for (int e = tid; e < kSimtCols * kSimtFeatures; e += kSimtThreads) {
        const int j = e / kSimtFeatures, k = e % kSimtFeatures;
        const int64_t gj = col0 + j, gk = f0 + k;
        feat_s[j][k] = (gj < C && gk < d) ? x[gj * d + gk] : 0.f;
      }
      __syncthreads();
      float acc[kSimtMicro][kSimtMicro] = {};
#pragma unroll 4
      for (int j = 0; j < kSimtCols; ++j) {
        float w[kSimtMicro], v[kSimtMicro];
        for (int p = 0; p < kSimtMicro; ++p) w[p] = weight_s[ty + kSimtSide * p][j];
        for (int q = 0; q < kSimtMicro; ++q) v[q] = feat_s[j][tx + kSimtSide * q];
        for (int p = 0; p < kSimtMicro; ++p)
          for (int q = 0; q < kSimtMicro; ++q) acc[p][q] = fmaf(w[p], v[q], acc[p][q]);
      }
#pragma unroll
      for (int p = 0; p < kSimtMicro; ++p) {
        const int64_t gi = row0 + ty + kSimtSide * p;
        for (int q = 0; q < kSimtMicro; ++q) {
          const int64_t gk = f0 + tx + kSimtSide * q;
          if (gi < C && gk < d) forces[gi * d + gk] += acc[p][q];
        }
      }
      __syncthreads();  // feat_s is refilled next step; weight_s next tile
    }
  }

  // The 16 threads sharing a row are one half-warp: xor-shuffles below 16 stay inside it.
#pragma unroll
  for (int p = 0; p < kSimtMicro; ++p) {
    for (int offset = kSimtSide / 2; offset > 0; offset /= 2) {
      best[p] = max_keep_first(best[p], __shfl_xor_sync(0xffffffffu, best[p], offset));
      e_sum[p] += __shfl_xor_sync(0xffffffffu, e_sum[p], offset);
    }
    const int64_t gi = row0 + ty + kSimtSide * p;
    if (tx == 0 && gi < C) {
      max_cos[gi] = best[p];
      energy[gi] = e_sum[p];
    }
  }
  __syncthreads();  // every a_i of the block is complete (and visible) in forces

  const int lane = tid % 32, warp = tid / 32;
  for (int r = warp; r < kSimtRows; r += kSimtThreads / 32) {
    const int64_t gi = row0 + r;
    if (gi >= C) break;
    project_row_on_tangent(forces + gi * d, x + gi * d, d, lane);
  }
}

// ---------------------------------------------------------------------------------------------
// tensor_core: both products on tensor cores with bf16 operands and fp32 accumulation (mma.sync
// m16n8k16, fragments loaded by ldmatrix), like the Triton kernel and the CPU op's tensor_core. The
// operands are a zero-padded bf16 copy of the points made by the caller ([round_up(C, 64)][dp], dp = d
// rounded up to 16; see nbody_tc_operand_shape), so tiles load as 16-byte cp.async copies without
// bounds checks.
//
// A block of 8 warps owns 64 rows and one slice of FS features of their force accumulator, which
// stays in registers for the whole sweep (the tf32 WMMA kernel this replaces kept it in shared memory
// and reloaded it for every tile; it ran 2.5x slower than simt on an H200). The block's rows and the
// current 64-column tile sit in shared memory in full, the next tile loading into a second buffer
// where shared memory allows (dp <= 560 on an H100); the single-buffered layout bounds d (d <= 864
// there; larger d runs simt). Warp w owns rows [16 (w % 4), +16) and, of each tile, columns [32 (w / 4), +32). Per tile:
//   1. Gram: the warp's 16 x 32 piece over all of dp, in registers;
//   2. weights: phi'(cos) of its 16 x 32 cells, in registers (reducing each row's max cosine and
//      energy on the way), written to shared memory as bf16;
//   3. pull: the warp adds W[its 16 rows][all 64 columns] X_cols[64][half of the slice] to its
//      accumulator: the two warps of a row band split the slice's features.
// The tangent projection needs whole rows (a slice has only FS features), so it is a second kernel.
constexpr int kTcRows = 64;
constexpr int kTcCols = 64;
constexpr int kTcThreads = 256;
constexpr int kTcWarps = kTcThreads / 32;
constexpr int kTcBand = 16;                          // rows of a warp (the mma's M)
constexpr int kTcBands = kTcRows / kTcBand;           // 4
constexpr int kTcHalves = kTcWarps / kTcBands;        // 2 warps per band
constexpr int kTcWarpCols = kTcCols / kTcHalves;      // 32 Gram columns per warp
constexpr int kTcFeatureAlign = 16;
// 8 bf16 (16 bytes) of skew: row strides are then odd multiples of 16 bytes modulo 128, so the 8 rows
// an ldmatrix phase reads fall in different bank groups.
constexpr int kTcSkew = 8;
constexpr int kTcLdWeight = kTcCols + kTcSkew;
static_assert(kTcRows == kTcCols, "one loader fills the row block and the column tiles");
static_assert(kTcBands * kTcHalves == kTcWarps && kTcWarpCols % 16 == 0, "warp w: band w % 4, half w / 4");
static_assert(2 * kTcHalves * kTcRows * sizeof(float) <= kTcRows * kTcLdWeight * 2,
              "the final cross-warp reduction fits in the weight tile");

__host__ __device__ __forceinline__ int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Bytes of dynamic shared memory: the row block and `stages` column tiles ([64][dp + skew] bf16 each)
// and the bf16 weight tile. Every part starts 16-byte aligned (ldmatrix and cp.async rows).
int64_t tc_shared_bytes(int64_t dp, int stages) {
  return (1 + stages) * int64_t(kTcRows) * (dp + kTcSkew) * 2 + int64_t(kTcRows) * kTcLdWeight * 2;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define PEDCC_TC_ENABLED 1
#else
#define PEDCC_TC_ENABLED 0
#endif

#if PEDCC_TC_ENABLED
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8 x 8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and lane l receives
// row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of each (.trans: column l / 4, rows 2 (l % 4), +1).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

// c (16 x 8, fp32) += a (16 x 16, bf16, row-major fragment) b (16 x 8, bf16, column fragment b0, b1).
// Lane l = 4g + t holds c[0], c[1] at row g, columns 2t, 2t + 1 and c[2], c[3] at row g + 8.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 64 rows of dp bf16 from global (row stride dp) into shared memory (row stride ld), 16 bytes per
// cp.async; dp is a multiple of 8 and both bases are 16-byte aligned. Not waited for here.
__device__ __forceinline__ void load_tile_async(__nv_bfloat16* dst, int ld, const __nv_bfloat16* src, int64_t dp,
                                                int tid) {
  const int chunks = int(dp / 8);
  for (int e = tid; e < kTcRows * chunks; e += kTcThreads) {
    const int r = e / chunks, q = e % chunks;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(dst + r * ld + q * 8)),
                 "l"(src + int64_t(r) * dp + q * 8)
                 : "memory");
  }
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int kPending>
__device__ __forceinline__ void wait_tile() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}
#endif

template <int FS>
__global__ void __launch_bounds__(kTcThreads, 1)
nbody_tc_kernel(const __nv_bfloat16* __restrict__ xh, int64_t C, int64_t d, int64_t dp, int stages, int kind,
                float param, float shift, float* __restrict__ forces, float* __restrict__ max_cos,
                float* __restrict__ energy) {
#if PEDCC_TC_ENABLED
  constexpr int kBlocks = FS / kTcHalves / 8;  // 8-feature accumulator blocks of a warp
  static_assert(kBlocks % 2 == 0 && kBlocks * 8 * kTcHalves == FS, "FS is a multiple of 32");

  extern __shared__ __align__(128) unsigned char smem[];
  const int ld = int(dp) + kTcSkew;
  __nv_bfloat16* rows_s = reinterpret_cast<__nv_bfloat16*>(smem);          // [64][ld]
  __nv_bfloat16* cols_s = rows_s + kTcRows * ld;                            // [stages][64][ld]
  __nv_bfloat16* weight_s = cols_s + stages * kTcCols * ld;                 // [64][kTcLdWeight]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int band = warp % kTcBands, half = warp / kTcBands;
  const int64_t row0 = int64_t(blockIdx.x) * kTcRows;
  // The two warps of a band take alternate 16-feature pairs of the slice (pair p of this warp starts
  // at feature first_col + 32 p), so a last slice that reaches past dp leaves both equally idle.
  const int64_t first_col = int64_t(blockIdx.y) * FS + 16 * half;
  const int64_t my_rows[2] = {row0 + band * kTcBand + g, row0 + band * kTcBand + g + 8};

  // ldmatrix row addresses of this lane (see ldmatrix_x4): an A fragment at (row, k) of a row-major
  // tile reads row + lane % 16, column k + 8 (lane / 16); a B fragment of the Gram (two 8-column
  // blocks of X_cols^T) reads tile row n + lane % 8 + 8 (lane / 16), column k + 8 ((lane / 8) % 2); a B
  // fragment of the pull (.trans, two 8-feature blocks) reads tile row j + lane % 8 + 8 ((lane / 8) % 2),
  // feature f + 8 (lane / 16).
  const int a_row = lane % 16, a_col = 8 * (lane / 16);
  const int b_row = lane % 8 + 8 * (lane / 16), b_col = 8 * ((lane / 8) % 2);
  const int v_row = lane % 8 + 8 * ((lane / 8) % 2), v_col = 8 * (lane / 16);

  float acc[kBlocks][4];
#pragma unroll
  for (int b = 0; b < kBlocks; ++b) acc[b][0] = acc[b][1] = acc[b][2] = acc[b][3] = 0.f;
  float best[2] = {-INFINITY, -INFINITY}, e_sum[2] = {0.f, 0.f};

  load_tile_async(rows_s, ld, xh + row0 * dp, dp, tid);
  load_tile_async(cols_s, ld, xh, dp, tid);
  const int64_t tiles = (C + kTcCols - 1) / kTcCols;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t col0 = tile * kTcCols;
    const __nv_bfloat16* cols = cols_s + (stages == 2 ? int(tile & 1) : 0) * kTcCols * ld;
    if (stages == 2 && tile + 1 < tiles) {
      // Into the buffer the previous tile used: its last reads were before the barrier that ended it.
      load_tile_async(cols_s + int((tile + 1) & 1) * kTcCols * ld, ld, xh + (col0 + kTcCols) * dp, dp, tid);
      wait_tile<1>();
    } else {
      wait_tile<0>();
    }
    __syncthreads();  // this tile (and, the first time, the row block) is in shared memory

    // 1. Gram: gram[b] holds columns 32 half + 8 b + 2t, +1 of rows g and g + 8 of the band.
    float gram[kTcWarpCols / 8][4] = {};
    {
      const uint32_t a_base = shared_address(rows_s + (band * kTcBand + a_row) * ld + a_col);
      const uint32_t b_base = shared_address(cols + (half * kTcWarpCols + b_row) * ld + b_col);
#pragma unroll 2
      for (int k = 0; k < int(dp); k += 16) {
        uint32_t a[4];
        ldmatrix_x4(a, a_base + k * 2);
#pragma unroll
        for (int p = 0; p < kTcWarpCols / 16; ++p) {
          uint32_t b[4];
          ldmatrix_x4(b, b_base + (p * 16 * ld + k) * 2);
          mma_bf16(gram[2 * p], a, b[0], b[1]);
          mma_bf16(gram[2 * p + 1], a, b[2], b[3]);
        }
      }
    }

    // 2. Weights, straight from the Gram fragments; pairs of columns go out as one bf16x2 store.
#pragma unroll
    for (int b = 0; b < kTcWarpCols / 8; ++b) {
      const int c = half * kTcWarpCols + 8 * b + 2 * t;  // column within the tile
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float w[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t gi = my_rows[h], gj = col0 + c + e;
          w[e] = 0.f;
          if (gi < C && gj < C && gi != gj) {
            const float cs = gram[b][2 * h + e];
            float phi, dphi;
            pair_potential<float>(kind, param, shift, cs, &phi, &dphi);
            best[h] = max_keep_first(best[h], cs);
            e_sum[h] += phi;
            w[e] = dphi;
          }
        }
        *reinterpret_cast<__nv_bfloat162*>(weight_s + (band * kTcBand + g + 8 * h) * kTcLdWeight + c) =
            __floats2bfloat162_rn(w[0], w[1]);
      }
    }
    __syncthreads();  // the whole 64 x 64 weight tile is written

    // 3. Pull: acc[b] holds features first_col + 32 (b / 2) + 8 (b % 2) + 2t, +1 of rows g and g + 8.
    {
      const uint32_t w_base = shared_address(weight_s + (band * kTcBand + a_row) * kTcLdWeight + a_col);
      const uint32_t v_base = shared_address(cols + v_row * ld + v_col);
#pragma unroll
      for (int j = 0; j < kTcCols; j += 16) {
        uint32_t a[4];
        ldmatrix_x4(a, w_base + j * 2);
#pragma unroll
        for (int p = 0; p < kBlocks / 2; ++p) {
          const int64_t f = first_col + 32 * p;
          if (f < dp) {  // the last slice may reach past dp (warp-uniform)
            uint32_t b[4];
            ldmatrix_x4_trans(b, v_base + uint32_t((j * ld + f) * 2));
            mma_bf16(acc[2 * p], a, b[0], b[1]);
            mma_bf16(acc[2 * p + 1], a, b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // this tile's buffer and the weight tile are no longer read
    if (stages == 1 && tile + 1 < tiles) load_tile_async(cols_s, ld, xh + (col0 + kTcCols) * dp, dp, tid);
  }

  // The unprojected a_i of this slice, with bounds (d need not be a multiple of 8, nor C of 64).
#pragma unroll
  for (int b = 0; b < kBlocks; ++b) {
    const int64_t f = first_col + 32 * (b / 2) + 8 * (b % 2) + 2 * t;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (my_rows[h] >= C) continue;
      float* out = forces + my_rows[h] * d;
      if (f < d) out[f] = acc[b][2 * h];
      if (f + 1 < d) out[f + 1] = acc[b][2 * h + 1];
    }
  }

  // Row statistics: over the 4 lanes of a row (t), then over the band's two warps (weight_s is free
  // after the loop's last barrier).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    for (int offset = 1; offset < 4; offset *= 2) {
      best[h] = max_keep_first(best[h], __shfl_xor_sync(0xffffffffu, best[h], offset));
      e_sum[h] += __shfl_xor_sync(0xffffffffu, e_sum[h], offset);
    }
  }
  float* partial = reinterpret_cast<float*>(weight_s);  // [half][row][best, energy]
  if (t == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = band * kTcBand + g + 8 * h;
      partial[(half * kTcRows + r) * 2] = best[h];
      partial[(half * kTcRows + r) * 2 + 1] = e_sum[h];
    }
  }
  __syncthreads();
  if (blockIdx.y == 0 && tid < kTcRows && row0 + tid < C) {
    float m = partial[tid * 2], e = partial[tid * 2 + 1];
    for (int other = 1; other < kTcHalves; ++other) {
      m = max_keep_first(m, partial[(other * kTcRows + tid) * 2]);
      e += partial[(other * kTcRows + tid) * 2 + 1];
    }
    max_cos[row0 + tid] = m;
    energy[row0 + tid] = e;
  }
#endif
}

// forces_i <- -(a_i - (a_i . x_i) x_i), in place: one warp per row.
__global__ void project_tangent_kernel(const float* __restrict__ x, int64_t C, int64_t d, float* __restrict__ forces) {
  const int64_t i = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (i >= C) return;  // whole warps leave together
  project_row_on_tangent(forces + i * d, x + i * d, d, threadIdx.x % 32);
}

int shared_optin_bytes() {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    cudaGetLastError();  // this failed query must not be reported by a later launch
    return 0;
  }
  return optin;
}

template <int FS>
int launch_tc(const float* points, const __nv_bfloat16* operands, int64_t C, int64_t d, int64_t dp, int kind,
              float param, float shift, float* forces, float* max_cos, float* energy, cudaStream_t stream) {
  const int optin = shared_optin_bytes();
  const int stages = tc_shared_bytes(dp, 2) <= optin ? 2 : 1;
  const int64_t bytes = tc_shared_bytes(dp, stages);
  // The cap is the device's limit, not this call's size: host threads launching other d at the same
  // time then never see a cap set below their own launch.
  cudaError_t err = cudaFuncSetAttribute(nbody_tc_kernel<FS>, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
  if (err != cudaSuccess) return int(err);
  const dim3 grid(unsigned((C + kTcRows - 1) / kTcRows), unsigned((d + FS - 1) / FS));
  nbody_tc_kernel<FS><<<grid, kTcThreads, size_t(bytes), stream>>>(operands, C, d, dp, stages, kind, param, shift,
                                                                    forces, max_cos, energy);
  err = cudaGetLastError();
  if (err != cudaSuccess) return int(err);
  constexpr int kRowsPerBlock = 8;
  project_tangent_kernel<<<unsigned((C + kRowsPerBlock - 1) / kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
      points, C, d, forces);
  return int(cudaGetLastError());
}

int launch_simt(const float* x, int64_t C, int64_t d, int kind, float param, float shift, float* forces,
                float* max_cos, float* energy, cudaStream_t stream) {
  // The kernel accumulates into forces, so it starts from zero.
  cudaError_t err = cudaMemsetAsync(forces, 0, sizeof(float) * size_t(C) * size_t(d), stream);
  if (err != cudaSuccess) return int(err);
  const int64_t blocks = (C + kSimtRows - 1) / kSimtRows;
  nbody_simt_kernel<<<dim3(unsigned(blocks)), kSimtThreads, 0, stream>>>(x, C, d, kind, param, shift,
                                                                          forces, max_cos, energy);
  return int(cudaGetLastError());
}

}  // namespace

bool nbody_tc_usable(int64_t d) {
  int device = 0, major = 0;
  cudaFuncAttributes kernel{};
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaFuncGetAttributes(&kernel, nbody_tc_kernel<64>) != cudaSuccess) {
    cudaGetLastError();  // this failed query must not be reported by a later launch
    return false;
  }
  // ptxVersion: the architecture the kernel was compiled for. A build without sm_80 code (say
  // TORCH_CUDA_ARCH_LIST=7.5+PTX, JIT-compiled on an H100) holds the kernel's empty pre-sm_80 body.
  return major >= 8 && kernel.ptxVersion >= 80 && tc_shared_bytes(round_up(d, kTcFeatureAlign), 1) <= shared_optin_bytes();
}

void nbody_tc_operand_shape(int64_t C, int64_t d, int64_t* rows, int64_t* cols) {
  *rows = round_up(C, kTcRows);
  *cols = round_up(d, kTcFeatureAlign);
}

int nbody_forces_cuda_simt(const float* points, int64_t C, int64_t d, int kind, float param, float shift,
                           float* forces, float* max_cos, float* energy, void* stream) {
  return launch_simt(points, C, d, kind, param, shift, forces, max_cos, energy, static_cast<cudaStream_t>(stream));
}

int nbody_forces_cuda_tc(const float* points, const void* operands, int64_t C, int64_t d, int kind, float param,
                         float shift, float* forces, float* max_cos, float* energy, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const auto* xh = static_cast<const __nv_bfloat16*>(operands);
  const int64_t dp = round_up(d, kTcFeatureAlign);
  // The narrowest slice that holds all of d, up to 512 features (16 fragments a warp, 213
  // registers a thread); wider d runs several slices, each recomputing the Gram tiles.
  if (dp <= 64) return launch_tc<64>(points, xh, C, d, dp, kind, param, shift, forces, max_cos, energy, stream);
  if (dp <= 128) return launch_tc<128>(points, xh, C, d, dp, kind, param, shift, forces, max_cos, energy, stream);
  if (dp <= 256) return launch_tc<256>(points, xh, C, d, dp, kind, param, shift, forces, max_cos, energy, stream);
  return launch_tc<512>(points, xh, C, d, dp, kind, param, shift, forces, max_cos, energy, stream);
}

const char* nbody_cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace pedcc
