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
//   tensor_core  the same loop with both products on tensor cores (WMMA m16n16k8, tf32 operands,
//                fp32 accumulation); the accumulator lives in shared memory, which bounds d
//                (d <= 1472 with the 227 KB an H100 block may opt into). Larger d, or a GPU
//                before sm_80, runs simt.
#include <cuda_runtime.h>
#include <mma.h>

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
    float* a = forces + gi * d;
    const float* xi = x + gi * d;
    float radial = 0.f;
    for (int64_t k = lane; k < d; k += 32) radial = fmaf(a[k], xi[k], radial);
    for (int offset = 16; offset > 0; offset /= 2) radial += __shfl_xor_sync(0xffffffffu, radial, offset);
    for (int64_t k = lane; k < d; k += 32) a[k] = -(a[k] - radial * xi[k]);
  }
}

// ---------------------------------------------------------------------------------------------
// tensor_core: 4 warps, a block owns 32 rows; per 64-column tile, warp w computes the Gram
// fragments of columns [16w, 16w + 16) for both 16-row halves, and in the force product the
// accumulator fragments of features [f0 + 16w, f0 + 16w + 16). Every shared array has a leading
// dimension that is a multiple of 4 floats (WMMA's rule for 32-bit types) plus 4 floats of skew,
// and every fragment pointer is 32-byte aligned (16 rows x ldm x 4 bytes and 8-float column steps).
constexpr int kTcRows = 32;
constexpr int kTcCols = 64;
constexpr int kTcDepth = 32;
constexpr int kTcFeatures = 64;
constexpr int kTcThreads = 128;
constexpr int kTcSkew = 4;
constexpr int kTcLdDepth = kTcDepth + kTcSkew;
constexpr int kTcLdCols = kTcCols + kTcSkew;
constexpr int kTcLdFeatures = kTcFeatures + kTcSkew;
constexpr int kFrag = 16;
constexpr int kFragK = 8;
static_assert(kTcRows == 2 * kFrag && kTcCols == 4 * kFrag && kTcFeatures == 4 * kFrag,
              "4 warps: each owns one 16-wide column fragment and both 16-row halves");
static_assert(kTcCols >= kTcRows && kTcThreads == 4 * kTcRows, "loaders and the row-per-4-threads map");

__host__ __device__ __forceinline__ int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Floats of dynamic shared memory: the accumulator [32][dp + skew] with dp = d rounded up to a
// feature slice, then the Gram slices, the weight tile and the feature slice.
int64_t tc_shared_floats(int64_t d) {
  const int64_t ld_acc = round_up(d, kTcFeatures) + kTcSkew;
  return kTcRows * ld_acc + kTcRows * kTcLdDepth + kTcCols * kTcLdDepth + kTcRows * kTcLdCols +
         kTcCols * kTcLdFeatures;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define PEDCC_TC_ENABLED 1
#else
#define PEDCC_TC_ENABLED 0
#endif

template <typename Frag>
__device__ __forceinline__ void round_to_tf32(Frag& frag) {
#if PEDCC_TC_ENABLED
  for (int t = 0; t < frag.num_elements; ++t) frag.x[t] = nvcuda::wmma::__float_to_tf32(frag.x[t]);
#endif
}

// acc[h] += A_h B for h = 0, 1: A_h the 16 x 8 row-major tile at a + h * 16 * lda, B the 8 x 16 tile at
// b in layout BLayout, all rounded to tf32 as loaded. The two row tiles share one load of B.
template <typename BLayout, typename Acc>
__device__ __forceinline__ void mma_two_row_tiles(Acc (&acc)[2], const float* a, int lda, const float* b, int ldb) {
#if PEDCC_TC_ENABLED
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFragK, wmma::precision::tf32, BLayout> b_frag;
  wmma::load_matrix_sync(b_frag, b, ldb);
  round_to_tf32(b_frag);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFragK, wmma::precision::tf32, wmma::row_major> a_frag;
    wmma::load_matrix_sync(a_frag, a + h * kFrag * lda, lda);
    round_to_tf32(a_frag);
    wmma::mma_sync(acc[h], a_frag, b_frag, acc[h]);
  }
#endif
}

__global__ void __launch_bounds__(kTcThreads)
nbody_tc_kernel(const float* __restrict__ x, int64_t C, int64_t d, int kind, float param, float shift,
                float* __restrict__ forces, float* __restrict__ max_cos, float* __restrict__ energy) {
#if PEDCC_TC_ENABLED
  using namespace nvcuda;
  extern __shared__ __align__(128) float smem[];
  const int64_t dp = round_up(d, kTcFeatures);
  const int ld_acc = int(dp) + kTcSkew;
  float* acc_s = smem;                                // [kTcRows][ld_acc]
  float* rows_s = acc_s + kTcRows * ld_acc;           // [kTcRows][kTcLdDepth]
  float* cols_s = rows_s + kTcRows * kTcLdDepth;      // [kTcCols][kTcLdDepth]
  float* weight_s = cols_s + kTcCols * kTcLdDepth;    // [kTcRows][kTcLdCols]
  float* feat_s = weight_s + kTcRows * kTcLdCols;     // [kTcCols][kTcLdFeatures]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t row0 = int64_t(blockIdx.x) * kTcRows;

  for (int e = tid; e < kTcRows * ld_acc; e += kTcThreads) acc_s[e] = 0.f;

  // Thread t forms the weights of row t / 4, columns t % 4 + 4m: the four threads of a row are
  // adjacent lanes, and a warp's accesses cover all 32 banks.
  const int my_row = tid / 4, my_col = tid % 4;
  float best = -INFINITY, e_sum = 0.f;

  for (int64_t col0 = 0; col0 < C; col0 += kTcCols) {
    wmma::fragment<wmma::accumulator, kFrag, kFrag, kFragK, float> gram[2];
    wmma::fill_fragment(gram[0], 0.f);
    wmma::fill_fragment(gram[1], 0.f);
    for (int64_t k0 = 0; k0 < d; k0 += kTcDepth) {
      for (int e = tid; e < kTcCols * kTcDepth; e += kTcThreads) {
        const int r = e / kTcDepth, k = e % kTcDepth;
        const int64_t gk = k0 + k, gj = col0 + r;
        cols_s[r * kTcLdDepth + k] = (gj < C && gk < d) ? x[gj * d + gk] : 0.f;
        if (r < kTcRows) {
          const int64_t gi = row0 + r;
          rows_s[r * kTcLdDepth + k] = (gi < C && gk < d) ? x[gi * d + gk] : 0.f;
        }
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kTcDepth; kk += kFragK) {
        // B = X_cols^T: column n of B is row n of cols_s, i.e. cols_s read column-major.
        mma_two_row_tiles<wmma::col_major>(gram, rows_s + kk, kTcLdDepth, cols_s + warp * kFrag * kTcLdDepth + kk,
                                           kTcLdDepth);
      }
      __syncthreads();
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
      wmma::store_matrix_sync(weight_s + h * kFrag * kTcLdCols + warp * kFrag, gram[h], kTcLdCols,
                              wmma::mem_row_major);
    __syncthreads();

    {
      const int64_t gi = row0 + my_row;
      for (int m = 0; m < kTcCols / 4; ++m) {
        const int c = my_col + 4 * m;
        const int64_t gj = col0 + c;
        float* cell = weight_s + my_row * kTcLdCols + c;
        float w = 0.f;
        if (gi < C && gj < C && gi != gj) {
          const float cs = *cell;
          float phi, dphi;
          pair_potential<float>(kind, param, shift, cs, &phi, &dphi);
          best = max_keep_first(best, cs);
          e_sum += phi;
          w = dphi;
        }
        *cell = w;
      }
    }

    for (int64_t f0 = 0; f0 < d; f0 += kTcFeatures) {
      __syncthreads();  // weight_s is final, and the previous feature slice is no longer read
      for (int e = tid; e < kTcCols * kTcFeatures; e += kTcThreads) {
        const int j = e / kTcFeatures, k = e % kTcFeatures;
        const int64_t gj = col0 + j, gk = f0 + k;
        feat_s[j * kTcLdFeatures + k] = (gj < C && gk < d) ? x[gj * d + gk] : 0.f;
      }
      __syncthreads();
      // Warp w alone reads and writes accumulator columns [f0 + 16w, f0 + 16w + 16).
      float* acc_tile = acc_s + f0 + warp * kFrag;
      wmma::fragment<wmma::accumulator, kFrag, kFrag, kFragK, float> acc[2];
#pragma unroll
      for (int h = 0; h < 2; ++h)
        wmma::load_matrix_sync(acc[h], acc_tile + h * kFrag * ld_acc, ld_acc, wmma::mem_row_major);
#pragma unroll 2
      for (int jj = 0; jj < kTcCols; jj += kFragK) {
        mma_two_row_tiles<wmma::row_major>(acc, weight_s + jj, kTcLdCols, feat_s + jj * kTcLdFeatures + warp * kFrag,
                                           kTcLdFeatures);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h)
        wmma::store_matrix_sync(acc_tile + h * kFrag * ld_acc, acc[h], ld_acc, wmma::mem_row_major);
    }
    __syncthreads();  // weight_s and the Gram slices are rewritten by the next tile
  }

  for (int offset = 2; offset > 0; offset /= 2) {
    best = max_keep_first(best, __shfl_xor_sync(0xffffffffu, best, offset));
    e_sum += __shfl_xor_sync(0xffffffffu, e_sum, offset);
  }
  if (my_col == 0 && row0 + my_row < C) {
    max_cos[row0 + my_row] = best;
    energy[row0 + my_row] = e_sum;
  }

  for (int r = warp; r < kTcRows; r += kTcThreads / 32) {
    const int64_t gi = row0 + r;
    if (gi >= C) break;
    const float* a = acc_s + r * ld_acc;
    const float* xi = x + gi * d;
    float radial = 0.f;
    for (int64_t k = lane; k < d; k += 32) radial = fmaf(a[k], xi[k], radial);
    for (int offset = 16; offset > 0; offset /= 2) radial += __shfl_xor_sync(0xffffffffu, radial, offset);
    float* f = forces + gi * d;
    for (int64_t k = lane; k < d; k += 32) f[k] = -(a[k] - radial * xi[k]);
  }
#endif
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

// Whether the tensor-core kernel can run here: sm_80 or newer and the accumulator fits in the
// shared memory a block may opt into.
bool tc_fits(int64_t d, size_t* bytes) {
  int device = 0, major = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) return false;
  *bytes = sizeof(float) * size_t(tc_shared_floats(d));
  return major >= 8 && *bytes <= size_t(optin);
}

}  // namespace

int nbody_forces_cuda(const float* points, int64_t C, int64_t d, int kind, float param, float shift, int impl,
                      float* forces, float* max_cos, float* energy, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  size_t bytes = 0;
  if (impl == 1 && tc_fits(d, &bytes)) {
    cudaError_t err = cudaFuncSetAttribute(nbody_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           int(bytes));
    if (err != cudaSuccess) return int(err);
    const int64_t blocks = (C + kTcRows - 1) / kTcRows;
    nbody_tc_kernel<<<dim3(unsigned(blocks)), kTcThreads, bytes, stream>>>(points, C, d, kind, param, shift,
                                                                           forces, max_cos, energy);
    return int(cudaGetLastError());
  }
  // A cudaGetDevice/attribute failure above must not be reported by this launch.
  cudaGetLastError();
  return launch_simt(points, C, d, kind, param, shift, forces, max_cos, energy, stream);
}

const char* nbody_cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace pedcc
