"""pedcc_loss and PEDCCLoss: argument checks, then the backend that fits the device."""

import torch
from torch import nn

from ._validate import check_loss_args
from .chunked import pedcc_loss_chunked
from .kernels import triton_usable
from .reference import normalize_rows, pedcc_loss_reference

BACKENDS = ("auto", "triton", "torch", "reference")


def resolve_backend(backend: str, device: torch.device, dtypes=()) -> str:
    """The concrete backend for inputs on `device` with these dtypes: 'auto' is triton on CUDA unless
    an input is float64 (the Triton kernels accumulate in float32), else torch."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        wants_triton = device.type == "cuda" and torch.float64 not in dtypes
        return "triton" if wants_triton and triton_usable(device) else "torch"
    if backend == "triton" and not triton_usable(device):
        raise ValueError("backend='triton' needs triton installed and CUDA tensors "
                         f"(or TRITON_INTERPRET=1 on CPU); features are on {device}")
    return backend


def pedcc_loss(features, labels, centroids, *, s=15.0, m=0.5, n=1.0, lam=1.0, reduction="mean",
               mse_reduction="sum", ignore_index=-100, backend="auto", check_labels=True,
               chunk_size=None):
    """PEDCC-Loss: additive-margin softmax cross-entropy on cosines to fixed class centroids plus
    lam * (MSE to the target centroid) ** (1/n), DESIGN §2.

    Args:
        features: (N, d) float16 / bfloat16 / float32 / float64, any strides.
        labels: (N,) int64 (or int32) in [0, C), or ignore_index for rows to skip.
        centroids: (C, d), the dtype of features or float32. Gets a gradient when it requires one.
        s, m: scale and additive margin of the logits s * (cos - m [j == y]).
        n: root of the MSE term (>= 1); lam: its weight (>= 0).
        reduction: 'mean' (over non-ignored rows) | 'sum' | 'none' for the softmax term.
        mse_reduction: 'sum' (the authors' choice) | 'mean' for the MSE term (not used with 'none').
        backend: 'auto' (triton on CUDA unless an input is float64, torch otherwise) | 'triton' |
            'torch' | 'reference'. The triton backend's strategy comes from the environment variable
            PEDCC_TRITON_LOSS: 'sweep' (default, one fused sweep over the centroids), 'gemm'
            (cuBLAS GEMMs over chunks of classes, chunk size PEDCC_GEMM_CHUNK_MIB, default 64) or
            'epilogue' (per chunk a Triton GEMM with the softmax in its epilogue, then cuBLAS;
            'gemm' for fp16 operands or a logit range s (2 + |m|) too wide for its fixed reference).
        check_labels: verify the label range (one host sync); turn off on the hot path.
        chunk_size: classes per chunk of the torch backend (default 4096).

    Returns:
        A scalar loss, or (N,) per-row losses for reduction='none' (0 on ignored rows); float32 for
        half-precision inputs, else the inputs' dtype.
    """
    check_loss_args(features, labels, centroids, s=s, m=m, n=n, lam=lam, reduction=reduction,
                    mse_reduction=mse_reduction, ignore_index=ignore_index, check_labels=check_labels)
    labels = labels.long()
    options = dict(s=float(s), m=float(m), n=float(n), lam=float(lam), reduction=reduction,
                   mse_reduction=mse_reduction, ignore_index=ignore_index)
    chosen = resolve_backend(backend, features.device, (features.dtype, centroids.dtype))
    if chosen == "reference":
        return pedcc_loss_reference(features, labels, centroids, **options)
    if chosen == "triton":
        from .kernels.fused_loss import pedcc_loss_triton

        return pedcc_loss_triton(features, labels, centroids, **options)
    return pedcc_loss_chunked(features, labels, centroids, chunk_size=chunk_size, **options)


class PEDCCLoss(nn.Module):
    """PEDCC-Loss against pre-defined evenly-distributed class centroids.

    Args:
        num_classes: C; embedding_size: d.
        centroids: optional (C, d) tensor; by default generated with
            generate_centroids(C, d, method=method, seed=seed).
        trainable: start with the centroids as a Parameter (fine-tuning, seed §4.1). The usual recipe
            is to train with fixed centroids, then call `start_finetuning()` and give
            `crit.centroids` to the optimiser with a small learning rate.
        Other keywords are those of pedcc_loss.

    Shapes: forward(features (N, d), labels (N,)) -> scalar (or (N,) with reduction='none');
    predict(features (N, d)) -> (N,) int64, the nearest centroid by cosine.
    """

    def __init__(self, num_classes, embedding_size, *, centroids=None, s=15.0, m=0.5, n=1.0, lam=1.0,
                 reduction="mean", mse_reduction="sum", ignore_index=-100, backend="auto",
                 check_labels=True, trainable=False, method="auto", seed=0):
        super().__init__()
        if centroids is None:
            from .centroids import generate_centroids

            centroids = generate_centroids(num_classes, embedding_size, method=method, seed=seed)
        if not isinstance(centroids, torch.Tensor) or tuple(centroids.shape) != (num_classes, embedding_size):
            shape = tuple(centroids.shape) if isinstance(centroids, torch.Tensor) else type(centroids).__name__
            raise ValueError(f"centroids must be a tensor of shape ({num_classes}, {embedding_size}), got {shape}")
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.s, self.m, self.n, self.lam = s, m, n, lam
        self.reduction, self.mse_reduction = reduction, mse_reduction
        self.ignore_index, self.backend, self.check_labels = ignore_index, backend, check_labels
        self.register_buffer("centroids", centroids.detach().clone())
        if trainable:
            self.start_finetuning()

    @property
    def finetuning(self) -> bool:
        return isinstance(self.centroids, nn.Parameter)

    def start_finetuning(self) -> nn.Parameter:
        """Make the centroids a trainable Parameter (seed §4.1) and return it for the optimiser:
        `opt.add_param_group({"params": [crit.start_finetuning()], "lr": 1e-4})`."""
        if not self.finetuning:
            value = self.centroids.detach().clone()
            del self.centroids
            self.centroids = nn.Parameter(value)
        return self.centroids

    def stop_finetuning(self) -> None:
        """Freeze the centroids again as a buffer, keeping their current values."""
        if self.finetuning:
            value = self.centroids.detach().clone()
            del self.centroids
            self.register_buffer("centroids", value)

    def forward(self, features, labels):
        return pedcc_loss(features, labels, self.centroids, s=self.s, m=self.m, n=self.n, lam=self.lam,
                          reduction=self.reduction, mse_reduction=self.mse_reduction,
                          ignore_index=self.ignore_index, backend=self.backend,
                          check_labels=self.check_labels)

    @torch.no_grad()
    def predict(self, features):
        """(N, d) -> (N,) int64: the class whose centroid has the largest cosine with each row."""
        w = self.centroids.to(features.dtype)
        return (normalize_rows(features) @ normalize_rows(w).t()).argmax(1)

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, s={self.s}, "
                f"m={self.m}, n={self.n}, lam={self.lam}, finetuning={self.finetuning}")
