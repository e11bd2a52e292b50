"""TRACEAI_EXPORT_PROCESS=1 across os.fork(): the child process gets an export process of its own.

    TRACEAI_EXPORT_PROCESS=1 TRACEAI_TRACES_FILE=... python fork_export_process.py

Prints `CHILD_EXPORT True` (from the forked child) and `DROPPED <n>` (from the parent).
"""

import os

from fi_evals_core import register

telemetry = register()
tracer = telemetry.tracer_provider.get_tracer("app")
with tracer.start_as_current_span("in the parent"):
    pass
telemetry.force_flush()
parent_export = telemetry.export_process._proc.pid
pid = os.fork()
if pid == 0:
    with tracer.start_as_current_span("in the child"):
        pass
    telemetry.force_flush()
    print("CHILD_EXPORT", telemetry.export_process._proc.pid != parent_export, flush=True)
    telemetry.shutdown()
    os._exit(0)
os.waitpid(pid, 0)
with tracer.start_as_current_span("in the parent again"):
    pass
telemetry.shutdown()
print("DROPPED", telemetry.export_process.dropped)
