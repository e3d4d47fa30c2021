"""The CUDA sources compile for sm_90 with nvcc alone (no torch headers, no GPU needed), without
register spills: the compile check the project asks of every machine that has nvcc, CI included."""
import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU_SOURCES = sorted(f for f in os.listdir(os.path.join(REPO, "csrc")) if f.endswith(".cu"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", CU_SOURCES)
def test_cuda_source_compiles_for_sm90_without_spills(source, tmp_path):
    # The flags of setup.py's nvcc step, so the report is the shipped code's.
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90", "-O3", "--use_fast_math", "-lineinfo", "-Xptxas=-v", "-c",
           os.path.join(REPO, "csrc", source), "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-3000:]
    kernels = re.findall(r"Compiling entry function '(\w+)' for 'sm_90'", report)
    assert kernels, report[-3000:]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report)]
    assert len(spills) == len(kernels) and not any(spills), report[-3000:]
