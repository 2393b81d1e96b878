"""Fail the image build unless the GPU runtime is what got installed (run by the Dockerfile).

onnxruntime and onnxruntime-gpu write the same `onnxruntime/` package folder: with both
installed, whichever lands last wins, and a CPU build makes every session fall back to the CPU
without a word. So: the CUDA execution provider must be compiled in (get_available_providers
lists the providers of the installed build; it needs no GPU at build time), the CPU
distribution must be absent, and FAISS must be the GPU build. Exit status 1 names the problem.
"""

from __future__ import annotations

import importlib.metadata
import sys


def problems() -> list[str]:
    found: list[str] = []
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        found.append(f"onnxruntime has no CUDAExecutionProvider (providers: {providers})")
    installed = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    if "onnxruntime" in installed:
        found.append("the CPU onnxruntime distribution is installed beside onnxruntime-gpu")
    if "onnxruntime-gpu" not in installed:
        found.append("onnxruntime-gpu is not installed")
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        found.append("faiss is the CPU build (no StandardGpuResources)")
    return found


if __name__ == "__main__":
    wrong = problems()
    for problem in wrong:
        print(f"GPU runtime check: {problem}", file=sys.stderr)
    sys.exit(1 if wrong else 0)
