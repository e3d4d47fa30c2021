"""Centroid files with metadata: .pt (torch), .npy (+ a .json sidecar), .safetensors (if installed).

Metadata always holds C and d (checked against the array on load) and whatever the caller adds:
method, seed, stats. A truncated, corrupt or mismatched file raises ValueError naming the file.
"""
import json
import os

import numpy as np
import torch

FORMAT_TAG = "pedcc_kernels.centroids"
FORMAT_VERSION = 1
SUFFIXES = (".pt", ".npy", ".safetensors")
TENSOR_KEY = "centroids"


def check_path(path):
    """The format suffix of `path` ('.pt', '.npy' or '.safetensors'), or ValueError before any work
    is done for a file that could not be written."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"unsupported centroid file type {suffix!r} for {os.fspath(path)!r}; "
                         f"use one of {SUFFIXES}")
    if suffix == ".safetensors":
        try:
            import safetensors.torch  # noqa: F401
        except ImportError as exc:
            raise ValueError("the .safetensors format needs the safetensors package "
                             "(pip install 'pedcc_kernels[files]')") from exc
    return suffix


def sidecar_path(path):
    """Where the metadata of a .npy file lives: FILE.npy.json."""
    return os.fspath(path) + ".json"


def _plain(value):
    """Metadata as JSON-compatible Python values (tensors and numpy scalars become numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"metadata values must be numbers, strings, lists or dicts, got {type(value).__name__}")


def save_centroids(path, centroids, **meta):
    """Write centroids and metadata to `path`; the suffix picks the format.

    Args:
        path: FILE.pt, FILE.npy (metadata in FILE.npy.json) or FILE.safetensors.
        centroids: (C, d) float tensor (stored on the CPU in its dtype; bfloat16 is stored as float32
            in .npy, which has no bfloat16).
        **meta: JSON-compatible values, e.g. method='repulsion', seed=0, stats=centroid_stats(W).

    Returns:
        The metadata written (dict), including C, d, dtype and the format tag.
    """
    if not isinstance(centroids, torch.Tensor) or not centroids.is_floating_point():
        raise TypeError("centroids must be a floating torch.Tensor")
    if centroids.dim() != 2 or centroids.shape[0] == 0:
        raise ValueError(f"centroids must be a non-empty (C, d) tensor, got shape {tuple(centroids.shape)}")
    suffix = check_path(path)
    reserved = {"C", "d", "format", "version"} & meta.keys()
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are set by save_centroids itself")
    tensor = centroids.detach().cpu().contiguous()
    if suffix == ".npy" and tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    info = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "C": int(tensor.shape[0]),
            "d": int(tensor.shape[1]), "dtype": str(tensor.dtype).replace("torch.", "")}
    info.update(_plain(meta))
    if suffix == ".pt":
        torch.save({TENSOR_KEY: tensor, "meta": info}, path)
    elif suffix == ".npy":
        np.save(path, tensor.numpy(), allow_pickle=False)
        with open(sidecar_path(path), "w") as f:
            json.dump(info, f, indent=1)
    else:
        import safetensors.torch
        safetensors.torch.save_file({TENSOR_KEY: tensor}, os.fspath(path),
                                    metadata={"pedcc": json.dumps(info)})
    return info


def _read(path, suffix):
    """(tensor, meta or None) from the file, or ValueError for anything unreadable."""
    try:
        if suffix == ".pt":
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or TENSOR_KEY not in blob:
                raise ValueError(f"no {TENSOR_KEY!r} entry")
            return blob[TENSOR_KEY], blob.get("meta")
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            meta = None
            if os.path.exists(sidecar_path(path)):
                with open(sidecar_path(path)) as f:
                    meta = json.load(f)
            return torch.from_numpy(np.ascontiguousarray(array)), meta
        import safetensors
        import safetensors.torch
        with safetensors.safe_open(os.fspath(path), framework="pt") as f:
            stored = f.metadata() or {}
            if TENSOR_KEY not in f.keys():
                raise ValueError(f"no {TENSOR_KEY!r} tensor")
            tensor = f.get_tensor(TENSOR_KEY)
        return tensor, json.loads(stored["pedcc"]) if "pedcc" in stored else None
    except FileNotFoundError:
        raise
    except Exception as exc:  # every reader has its own error types for damaged files
        raise ValueError(f"{os.fspath(path)!r} is not a readable centroid file (truncated or corrupt?): "
                         f"{type(exc).__name__}: {exc}") from exc


def load_centroids(path, *, device=None, dtype=None, with_meta=False):
    """Read centroids written by `save_centroids` (or any (C, d) array in a supported format).

    Args:
        path: FILE.pt, FILE.npy or FILE.safetensors.
        device, dtype: of the returned tensor (default: CPU, the stored dtype).
        with_meta: also return the metadata dict ({} when the file has none).

    Returns:
        (C, d) tensor, or (tensor, meta) with with_meta=True.

    Raises:
        FileNotFoundError: no such file. ValueError: truncated/corrupt file, not (C, d), non-finite
        values, or C/d different from the metadata.
    """
    suffix = check_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no centroid file at {os.fspath(path)!r}")
    tensor, meta = _read(path, suffix)
    name = os.fspath(path)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or tensor.shape[0] == 0:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name!r} does not hold a non-empty (C, d) array: {shape}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name!r} holds {tensor.dtype} values, not floating-point centroids")
    meta = dict(meta or {})
    for key, size in (("C", tensor.shape[0]), ("d", tensor.shape[1])):
        if key in meta and meta[key] != size:
            raise ValueError(f"{name!r} is mismatched: metadata says {key}={meta[key]} but the array has "
                             f"{size} ({tuple(tensor.shape)})")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name!r} holds non-finite values")
    tensor = tensor.to(device=device if device is not None else "cpu", dtype=dtype or tensor.dtype)
    return (tensor, meta) if with_meta else tensor
