"""Block sizes, autotune configurations and work splits of the fused PEDCC-Loss kernels.

The two sweep kernels (forward over classes, dL/dW over rows) share one tile vocabulary: BLOCK_M
rows of the resident operand, BLOCK_N rows of the streamed operand per step, BLOCK_K the chunk of d
per tl.dot of the cosine GEMM, D_SLICE the part of d whose gradient accumulator (BLOCK_M x D_SLICE,
fp32, in registers) one program owns.

Why D_SLICE: the accumulator O_i = sum_j p_ij w^_j is as wide as d. Up to d = 256 it fits beside the
cosine tile (FlashAttention's head dims), so one program keeps all of d and each loaded tile feeds
both GEMMs (BLOCK_K = D_SLICE = d). At d = 512 only a 64 x 32 tile with 8 warps still fits (128
accumulator registers a thread); beyond that the grid gets an axis over slices of d: each program
recomputes the full cosine tile (K loop over d) and accumulates only its slice. That costs one extra
cosine GEMM per extra slice (d = 1024 in 2 slices of 512: 6 instead of 4 N*C*d units of work; in 4
slices of 256: 10) but keeps large tiles on the tensor cores. Both kinds are candidates at d >= 256
and the autotuner picks per shape. Float32 operands (3xTF32) need twice the registers and shared
memory, so they use K chunks of 32 and slices of 128, or chunks of 16 and slices of 256.

Splits: the grid over row blocks alone is small (N = 1024 in blocks of 64 gives 16 programs for 132
SMs), so the forward also splits the classes into equal pieces (as FlashDecoding splits the keys)
and a small kernel merges the per-piece softmax statistics; dL/dW likewise splits the rows. Partial
results are added in a fixed order, so results are deterministic.
"""
import functools
import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# PEDCC_TRITON_AUTOTUNE=0 skips autotuning (first candidate of each list): no benchmarking on the
# first call of a shape, at the price of a possibly slower config.
AUTOTUNE = os.environ.get("PEDCC_TRITON_AUTOTUNE", "1") != "0"

# Width of a class or row piece is a multiple of the largest streamed tile, so pieces hold whole tiles.
PIECE_ALIGN = 16 if INTERPRET else 256
# A piece must carry enough GEMM work to hide the O(N*d) cost of merging it.
MIN_PIECE = 16 if INTERPRET else 1024
NOMINAL_BLOCK = 16 if INTERPRET else 64
# How the Triton backend computes the loss: 'sweep' (one fused Triton sweep over the centroids, the
# default: the strategy measured on a GPU), 'gemm' (library GEMMs over chunks of classes with the
# softmax in Triton, gemm_loss.py) or 'epilogue' (a Triton GEMM with the softmax in its epilogue,
# then a library GEMM, epilogue_loss.py; 'gemm' where its fixed reference is unsafe). Read at each
# call, so a benchmark can compare them.
LOSS_STRATEGIES = ("sweep", "gemm", "epilogue")


def loss_strategy() -> str:
    """The strategy named by PEDCC_TRITON_LOSS ('sweep' when unset)."""
    chosen = os.environ.get("PEDCC_TRITON_LOSS", "sweep")
    if chosen not in LOSS_STRATEGIES:
        raise ValueError(f"PEDCC_TRITON_LOSS must be one of {LOSS_STRATEGIES}, got {chosen!r}")
    return chosen


# Largest BLOCK_M / BLOCK_N of any config: bounds the int32 offsets inside a tile.
MAX_TILE_ROWS = 128

# Row-wise helper kernels (norms, merge, dL/dx, dL/dW finish): memory-bound, one fixed shape; 16 rows
# keep the per-element pointers of unaligned rows (d not a multiple of 8) in registers.
ROWWISE_BLOCK_ROWS = 16
ROWWISE_BLOCK_D = 32 if INTERPRET else 128
ROWWISE_WARPS = 4

# torch's float32 matmul precision -> tl.dot input precision. 'highest' maps to 3xTF32 (three tensor-core
# passes, error near fp32 rounding): Triton's exact-fp32 FMA dot spills kilobytes of registers at
# these tile shapes (ptxas, sm_90) and would be slower than the reference's SIMT GEMM.
# 'high' and 'medium' allow TF32 in torch's own matmuls, so they get it here too (one tensor-core pass).
TORCH_TO_TRITON_PRECISION = {"highest": "tf32x3", "high": "tf32", "medium": "tf32"}


def padded_dim(dim: int) -> int:
    """d rounded up to a power of two, at least 16 (tl.dot needs K >= 16)."""
    return max(16, triton.next_power_of_2(dim))


def size_key(n: int) -> int:
    """Autotune bucket of a size: shapes within a power of two share their tuned config."""
    return triton.next_power_of_2(n)


def fp32_operands(*dtypes: torch.dtype) -> bool:
    """The GEMMs run in fp32 when any input is fp32 (mixed half features and fp32 centroids are
    promoted, as in the reference)."""
    return torch.float32 in dtypes


def dot_precision(*dtypes: torch.dtype) -> str:
    """tl.dot input precision for fp32 operands, following torch.set_float32_matmul_precision.
    Half operands ignore it; the interpreter computes exact fp32 anyway."""
    if INTERPRET or not fp32_operands(*dtypes):
        return "ieee"
    return TORCH_TO_TRITON_PRECISION.get(torch.get_float32_matmul_precision(), "tf32x3")


def tile_config(block_m, block_n, block_k, d_slice, warps, stages):
    """A Triton config of the sweep vocabulary (BLOCK_M, BLOCK_N, BLOCK_K, D_SLICE), also used by the
    N-body sweep."""
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "D_SLICE": d_slice},
                         num_warps=warps, num_stages=stages)


def sweep_configs(d_pad: int, fp32: bool) -> list:
    """Autotune candidates of the sweep kernels for a padded dimension and operand width.

    The GPU candidates were compiled for sm_90 with the ptxas bundled in Triton (both sweeps; bf16,
    fp16, fp32 and mixed inputs). Where d is a multiple of 16, none spills more than about 200 bytes
    of registers but the last d = 512 half-precision candidate (280) and the last fp32 one (340, at
    d = 256, 512 and 1024), and each half-precision list has one that spills nothing (unaligned rows
    spill more); shared memory stays under 200 KB. Larger tiles (BLOCK_N = 128, or a 128-row
    one-pass block at d = 256) spill kilobytes and are left out. Under the interpreter there is one
    config (its autotuner cannot bench several) whose shape still exercises the sliced path (d > 32),
    so CPU tests cover both code paths.
    """
    if INTERPRET:
        tile = min(d_pad, 32)
        return [tile_config(16, 16, tile, tile, 4, 1)]
    candidates = _gpu_candidates(d_pad, fp32)
    return candidates if AUTOTUNE else candidates[:1]


def _gpu_candidates(d_pad: int, fp32: bool) -> list:
    if fp32:
        if d_pad <= 64:
            return [tile_config(64, 32, d_pad, d_pad, 4, 2), tile_config(128, 32, d_pad, d_pad, 8, 2)]
        sliced = [tile_config(64, 32, 32, 128, 8, 3), tile_config(128, 32, 32, 128, 8, 3),
                  tile_config(64, 32, 32, 128, 4, 3)]
        # Half as many slices (each recomputes the cosine GEMM in three tf32 passes) with K chunks of
        # 16: 340 / 52 bytes of spills in the forward / dL/dW sweep at d = 512 (forward: the same at
        # 256 and 1024; ptxas sm_90a; unmeasured, the autotuner decides).
        return sliced + ([tile_config(64, 32, 16, 256, 8, 2)] if d_pad >= 256 else [])
    if d_pad <= 128:
        return [tile_config(128, 64, d_pad, d_pad, 8, 3), tile_config(64, 64, d_pad, d_pad, 4, 3),
                tile_config(128, 32, d_pad, d_pad, 8, 3)]
    if d_pad == 256:
        return [tile_config(128, 32, 256, 256, 8, 2), tile_config(64, 64, 256, 256, 8, 2),
                tile_config(64, 32, 256, 256, 4, 3), tile_config(128, 32, 64, 128, 8, 3)]
    if d_pad == 512:
        # ptxas (sm_90a, bf16, unit strides) serialises the wgmma of the full-K 64 x 32 tiles (warning
        # C7515: the running max's rescale of O between wgmmas) and spills 130-190 bytes there; with the
        # fixed reference (fixed_reference.py: no rescale) they do not serialise and spill 16-88 bytes.
        # The sliced 64-row tiles neither spill nor serialise in either mode, so one of them comes first
        # (the only one with PEDCC_TRITON_AUTOTUNE=0). On the H200 the
        # first list reached 60-88 TFLOP/s (bf16, C=100000); the autotuner's choice is in the GPU log.
        # (64, 32, 64, 512): all of d in one slice (one cosine GEMM instead of two) with a K loop; no
        # spills since the forward stopped summing p cos (36 bytes before), no serialised wgmma
        # (unmeasured). (64, 64, 64, 512, 8, 2), last: the same with twice the classes per step (a
        # wider cosine wgmma, N = 64), at 264 bytes of forward spills (unmeasured; the autotuner decides).
        return [tile_config(64, 64, 64, 256, 8, 3), tile_config(64, 128, 64, 128, 8, 3),
                tile_config(64, 64, 128, 256, 8, 3), tile_config(64, 32, 64, 512, 8, 2),
                tile_config(64, 32, 512, 512, 8, 2),
                tile_config(64, 32, 512, 512, 8, 3), tile_config(128, 32, 64, 256, 8, 3),
                tile_config(64, 64, 64, 512, 8, 2)]
    return [tile_config(64, 32, 64, 512, 8, 2), tile_config(128, 32, 64, 256, 8, 3),
            tile_config(64, 64, 64, 256, 8, 3)]


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device."""
    return _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


def _target_programs(device: torch.device) -> int:
    """About two waves of programs fill the GPU; the interpreter only needs a few to test splits."""
    if device.type == "cuda" and not INTERPRET:
        return 2 * multiprocessors(device)
    return 4


def split_evenly(length: int, other_blocks: int, device: torch.device) -> tuple:
    """Cut `length` (classes for the forward, rows for dL/dW) into aligned pieces so that
    other_blocks * pieces programs fill the device. Returns (piece length, number of pieces)."""
    wanted = triton.cdiv(_target_programs(device), max(1, other_blocks))
    pieces = max(1, min(wanted, length // MIN_PIECE))
    piece = triton.cdiv(triton.cdiv(length, pieces), PIECE_ALIGN) * PIECE_ALIGN
    return piece, triton.cdiv(length, piece)
