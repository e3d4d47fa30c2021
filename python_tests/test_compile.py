"""torch.compile(fullgraph=True) of a model that calls pedcc_loss: no graph break, same loss and
gradients as eager. The Triton interpreter cannot be compiled through, so the triton backend compiles
on a GPU only; on CPU a subprocess without the interpreter checks that the custom ops trace into
their kernels (forward and backward graphs, TTIR mutation analysis for an sm_90 target)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pedcc_kernels as pk

from conftest import DEVICE, ON_GPU
from pedcc_kernels.kernels.fused_loss_config import LOSS_STRATEGIES

REPO = Path(__file__).resolve().parent.parent


def compiled_vs_eager(backend, features_dtype=torch.float32, centroids_dtype=torch.float32, n_rows=20,
                      n_classes=37):
    torch.manual_seed(0)
    model = torch.nn.Linear(24, 16).to(DEVICE)
    centroids = torch.nn.Parameter(torch.randn(n_classes, 16, device=DEVICE, dtype=centroids_dtype))
    x = torch.randn(n_rows, 24, device=DEVICE)
    y = torch.randint(0, n_classes, (n_rows,), device=DEVICE)
    y[-1] = -100

    def loss_fn(inputs, labels):
        features = model(inputs).to(features_dtype)
        return pk.pedcc_loss(features, labels, centroids, n=2.0, backend=backend, check_labels=False)

    results = []
    for fn in (torch.compile(loss_fn, fullgraph=True), loss_fn):
        loss = fn(x, y)
        grads = torch.autograd.grad(loss, [model.weight, model.bias, centroids])
        results.append((loss.detach(), [g.detach() for g in grads]))
    return results


def assert_same(compiled, eager, tol):
    (loss_c, grads_c), (loss_e, grads_e) = compiled, eager
    torch.testing.assert_close(loss_c, loss_e, atol=tol, rtol=tol)
    for g_c, g_e in zip(grads_c, grads_e):
        torch.testing.assert_close(g_c, g_e, atol=tol, rtol=tol)


def test_torch_backend_compiles_without_graph_breaks():
    torch._dynamo.reset()
    assert_same(*compiled_vs_eager("torch"), tol=1e-5)


@pytest.mark.skipif(not ON_GPU, reason="the Triton interpreter (CPU) cannot be compiled through")
@pytest.mark.parametrize("strategy", LOSS_STRATEGIES)
@pytest.mark.parametrize("features_dtype,centroids_dtype", [(torch.float32, torch.float32),
                                                            (torch.bfloat16, torch.float32),
                                                            (torch.bfloat16, torch.bfloat16)], ids=str)
def test_triton_backend_compiles_without_graph_breaks(features_dtype, centroids_dtype, strategy, monkeypatch):
    """bf16 features with bf16 centroids compile the 'gemm' strategy's half GEMMs with fp32 output."""
    monkeypatch.setenv("PEDCC_TRITON_LOSS", strategy)
    torch._dynamo.reset()
    tol = 1e-4 if features_dtype == centroids_dtype == torch.float32 else 2e-2
    assert_same(*compiled_vs_eager("triton", features_dtype, centroids_dtype), tol=tol)


@pytest.mark.skipif(not ON_GPU, reason="the Triton interpreter (CPU) cannot be compiled through")
def test_gemm_strategy_with_split_chunks_compiles(monkeypatch):
    """Few rows and 9000 classes: the 'gemm' strategy's split path (pieces of a chunk) under compile."""
    from pedcc_kernels.kernels import gemm_loss

    monkeypatch.setenv("PEDCC_TRITON_LOSS", "gemm")
    assert gemm_loss.chunk_pieces(4, 9000, DEVICE)[1] >= 2
    torch._dynamo.reset()
    assert_same(*compiled_vs_eager("triton", torch.bfloat16, torch.bfloat16, n_rows=4, n_classes=9000), tol=2e-2)


TRACE_SCRIPT = r"""
import json, os
os.environ.pop("TRITON_INTERPRET", None)
import torch, triton
from triton.backends.compiler import GPUTarget
from torch._dynamo.backends.common import aot_autograd
from torch._functorch import config as functorch_config
from torch._functorch.partitioners import min_cut_rematerialization_partition


class Sm90Target:
    # No GPU here: give Triton's frontend a target so torch can generate TTIR for its analysis.
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


triton.runtime.driver.set_active(Sm90Target())
import pedcc_kernels
import pedcc_kernels.loss

# The real entry point, as on a GPU: let pedcc_loss choose the triton backend for CPU tensors.
pedcc_kernels.loss.triton_usable = lambda device: True

graphs = {}
shapes = {}


class Traced(Exception):
    pass


def capture(kind):
    def compiler(gm, example_inputs):
        graphs[kind] = [(str(n.target), dict(n.kwargs)) for n in gm.graph.nodes if n.op == "call_function"]
        outputs = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
        shapes[kind] = [list(o.meta["val"].shape) for o in outputs if hasattr(o, "meta") and "val" in o.meta]

        def never_run(*args):
            raise Traced()
        return never_run
    return compiler


backend = aot_autograd(fw_compiler=capture("forward"), bw_compiler=capture("backward"),
                       partition_fn=min_cut_rematerialization_partition)
model = torch.nn.Linear(10, 8)
centroids = torch.nn.Parameter(torch.randn(600, 8))


def loss_fn(inputs, labels):
    return pedcc_kernels.pedcc_loss(model(inputs), labels, centroids, n=2.0, backend="triton",
                                    check_labels=False)


with functorch_config.patch(force_non_lazy_backward_lowering=True):
    try:
        torch.compile(loss_fn, fullgraph=True, backend=backend)(torch.randn(16, 10), torch.randint(0, 600, (16,)))
    except Traced:
        pass
report = {}
for kind, nodes in graphs.items():
    kernels = [kw for target, kw in nodes if "triton_kernel_wrapper" in target]
    report[kind] = {"kernels": len(kernels), "output_shapes": shapes[kind],
                    "scatters": sum("scatter" in target for target, _ in nodes),
                    "matmuls": sum(target.startswith("aten.mm") for target, _ in nodes),
                    "cloned": sorted({name for kw in kernels for name in kw.get("tensors_to_clone", [])})}
print(json.dumps(report))
"""


@pytest.mark.skipif(ON_GPU, reason="on a GPU the triton backend compiles and runs for real (tests above)")
@pytest.mark.parametrize("strategy", LOSS_STRATEGIES)
def test_triton_ops_trace_into_their_kernels(strategy):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["PEDCC_TRITON_LOSS"] = strategy
    env["PEDCC_GEMM_CHUNK_MIB"] = "1e-6"  # 'gemm', 'epilogue': chunks of 256 classes, so 600 take 3
    done = subprocess.run([sys.executable, "-c", TRACE_SCRIPT], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # sweep: forward = two row-norm kernels, the per-row reference (fixed_reference.py; at these s, m
    # and dtypes it applies), the class sweep, the merge; backward = dL/dx, dL/dW sweep
    # and finish. gemm (3 chunks): forward = two row norms, a softmax kernel per chunk between the
    # GEMMs x W^T and P W, the finish; backward = dL/dx, then per chunk the logit gradients and the
    # dL/dW finish, between the GEMMs W x^T and G^T x. epilogue (3 chunks): forward = two row norms, the
    # target reference, per chunk the epilogue GEMM and the fold of its tiles' sums before the GEMM P W,
    # the finish; backward = dL/dx, then per chunk an epilogue GEMM for the logit gradients and the
    # dL/dW finish, with the GEMM G^T x between them.
    chunks = 0 if strategy == "sweep" else 3
    forward_kernels = {"sweep": 5, "gemm": 3 + chunks, "epilogue": 4 + 2 * chunks}[strategy]
    assert report["forward"]["kernels"] == forward_kernels, report
    assert report["backward"]["kernels"] == (1 + 2 * chunks if chunks else 3), report
    # (the model's Linear adds an addmm to the forward and one mm, its weight gradient, to the backward)
    forward_matmuls = {"sweep": 0, "gemm": 2 * chunks, "epilogue": chunks}[strategy]
    assert report["forward"]["matmuls"] == forward_matmuls, report
    backward_matmuls = {"sweep": 0, "gemm": 2 * chunks, "epilogue": chunks}[strategy]
    assert report["backward"]["matmuls"] == backward_matmuls + 1, report
    # Each chunk writes its rows of the whole dL/dW: a write into a view of it would become a copy of
    # the rest of the gradient per chunk (slice_scatter) once functionalised.
    assert report["forward"]["scatters"] == report["backward"]["scatters"] == 0, report
    # The forward's outputs are the loss and what the backward keeps: nothing of N x C (the dot
    # products of a chunk were kept when the backward's GEMM could be merged with the forward's).
    n_rows, n_classes = 16, 600
    kept = report["forward"]["output_shapes"]
    assert [n_classes, 8] in kept and not [s for s in kept if n_rows in s and n_classes in s], kept
    # The mutation analysis must find that the kernels only write their output buffers; had it failed
    # it would report every argument, and each call would clone the features and the centroids.
    read_only = {"x_ptr", "w_ptr", "t_ptr", "dots_ptr", "labels_ptr", "grad_am_ptr", "grad_cos_ptr"}
    for kind in ("forward", "backward"):
        cloned = set(report[kind]["cloned"])
        assert cloned, kind
        assert not cloned & read_only, (kind, cloned & read_only)
