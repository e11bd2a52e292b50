"""Compile every fused-path kernel for NVIDIA GPUs without one: Triton's bundled ptxas, no driver.

Catches what Triton's interpreter cannot (typing of loop-carried values, shared memory, register
limits). Run as a module in a process WITHOUT `TRITON_INTERPRET` (the kernels must be defined for
compilation): prints one line per kernel compiled and exits non-zero on the first failure.

    python -m fi_evals_core.testing.triton_aot 90 80:bf16
"""

from __future__ import annotations

import os
import sys


def compile_for_gpu(capability: int, dtypes: tuple[str, ...] = ("bf16", "fp16", "fp32")) -> list[str]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fi_evals_core.evals.fused import kernels

    if kernels.INTERPRETED:
        raise RuntimeError("kernels were defined under TRITON_INTERPRET=1: nothing to compile")
    target = GPUTarget("cuda", capability, 32)
    done = []
    for dtype in dtypes:
        for kernel, signature, meta in kernels.launch_specs(dtype):
            meta = dict(meta)
            options = {k: meta.pop(k) for k in ("num_warps", "num_stages") if k in meta}
            signature = {**signature, **{name: "constexpr" for name in meta}}
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=meta), target=target,
                                      options=options)
            done.append(f"{kernel.__name__} sm_{capability} {dtype}: {compiled.metadata.shared} B shared memory")
    return done


def main(argv: list[str]) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    for target in argv or ["90"]:
        capability, _, dtypes = target.partition(":")
        for line in compile_for_gpu(int(capability), tuple(dtypes.split(",")) if dtypes else ("bf16", "fp16", "fp32")):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
