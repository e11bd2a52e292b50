"""The offline LLM in vLLM's default multi-process mode (EngineCore in its own process).

    python offline_multiprocess.py MODEL_DIR ENGINE_ARGS_JSON SETUP START_METHOD

SETUP is `register` (register() at the top of this script), `guarded` (register() under the
`__main__` guard, as multi-process vLLM scripts are written: a spawned EngineCore never runs it) or
`plugin` (no code: TRACEAI_VLLM_AUTO=1 in the environment, the plugin vLLM loads in each process). START_METHOD `fork` undoes the CPU
platform's switch to spawn. Everything above the `__main__` guard runs again in a spawned child (it
imports this file again), never in a forked one: each run prints `TOP_LEVEL <pid>`.
Prints `OUT_TOKENS <n>` and `START_METHOD <the method vLLM used>`.
"""

import json
import os
import sys

print("TOP_LEVEL", os.getpid(), flush=True)
MODEL_DIR, ENGINE_ARGS, SETUP, START_METHOD = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]

if SETUP == "register":
    from fi_evals_core import register

    telemetry = register()

if START_METHOD == "fork":
    from vllm.platforms.cpu import CpuPlatform

    _update = CpuPlatform.check_and_update_config.__func__

    def _keep_fork(cls, vllm_config):
        _update(cls, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    CpuPlatform.check_and_update_config = classmethod(_keep_fork)

from vllm import LLM, SamplingParams  # noqa: E402

if __name__ == "__main__":
    if SETUP == "guarded":
        from fi_evals_core import register

        telemetry = register()
    llm = LLM(model=MODEL_DIR, **ENGINE_ARGS)
    outs = llm.generate(["multi process", "two"], SamplingParams(max_tokens=4, ignore_eos=True))
    print("OUT_TOKENS", sum(len(o.outputs[0].token_ids) for o in outs))
    print("START_METHOD", os.environ.get("VLLM_WORKER_MULTIPROC_METHOD"))
    if SETUP in ("register", "guarded"):
        telemetry.shutdown()
    # else: the plugin's atexit hook flushes
