"""Every span and metric name this project writes, in one place.

GenAI names follow the current OpenTelemetry semantic conventions; the extras live in their own
namespaces (`model.*`, `gpu.*`, `inference.*`) so they never collide with a future `gen_ai.*` key.
"""

# GenAI semantic conventions
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_TOP_K = "gen_ai.request.top_k"
REQUEST_SEED = "gen_ai.request.seed"
REQUEST_STREAM = "gen_ai.request.stream"
REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
OUTPUT_TYPE = "gen_ai.output.type"  # the content type requested: text, json, ...
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
TOKEN_TYPE = "gen_ai.token.type"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
EMBEDDINGS_DIMENSION_COUNT = "gen_ai.embeddings.dimension.count"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"

# The span event that carries content when capture mode is EVENT_ONLY or SPAN_AND_EVENT.
CONTENT_EVENT = "gen_ai.client.inference.operation.details"

# Operation names (gen_ai.operation.name well-known values)
OP_CHAT = "chat"
OP_TEXT_COMPLETION = "text_completion"
OP_EMBEDDINGS = "embeddings"

# Throughput and latency derived per request (not part of the GenAI conventions)
TIME_PER_OUTPUT_TOKEN = "inference.time_per_output_token"
OUTPUT_TOKENS_PER_SECOND = "inference.output_tokens_per_second"
STREAM_COMPLETED = "inference.stream.completed"

# Framework
MODEL_FRAMEWORK = "model.framework"
MODEL_FRAMEWORK_VERSION = "model.framework.version"
MODEL_ENGINE = "model.engine"
MODEL_ENGINE_VERSION = "model.engine.version"
MODEL_DTYPE = "model.dtype"
MODEL_DEVICE = "model.device"
MODEL_QUANTIZATION = "model.quantization"
MODEL_ARCHITECTURE = "model.architecture"

# The runtime fingerprint (telemetry/fingerprint.py): computed once per engine or model, on every
# request span, so a change underneath (a tokenizer, a compile mode, a kernel stack) shows per request
MODEL_TOKENIZER_FINGERPRINT = "model.tokenizer.fingerprint"  # hash of what decides tokenization
MODEL_COMPILE_MODE = "model.compile.mode"  # vLLM's compilation mode, "eager", or "torch.compile"
MODEL_CUDA_GRAPHS = "model.cuda_graphs"  # vLLM's CUDA graph mode ("none" with enforce_eager)
MODEL_KV_CACHE_DTYPE = "model.kv_cache.dtype"
MODEL_ATTENTION_BACKEND = "model.attention.backend"  # vLLM's chosen backend, transformers' attn_implementation
MODEL_LORA_NAME = "model.lora.name"  # the adapter a request ran with
MODEL_LORA_ID = "model.lora.id"
RUNTIME_VERSION_PREFIX = "runtime."  # runtime.transformers.version, runtime.cuda.version, ...

# GPU memory (bytes)
GPU_INDEX = "gpu.index"
GPU_NAME = "gpu.name"
GPU_MEMORY_USED = "gpu.memory.used"
GPU_MEMORY_TOTAL = "gpu.memory.total"
GPU_TORCH_ALLOCATED = "gpu.torch.memory.allocated"
GPU_TORCH_RESERVED = "gpu.torch.memory.reserved"
GPU_TORCH_PEAK = "gpu.torch.memory.peak"
# Allocator health (the OOM story): reserved - allocated, and the allocator's cumulative counters
GPU_TORCH_FRAGMENTATION = "gpu.torch.memory.fragmentation"
GPU_TORCH_ALLOC_RETRIES = "gpu.torch.alloc_retries"  # cudaMalloc failures retried after freeing the cache
GPU_TORCH_OOMS = "gpu.torch.ooms"  # out-of-memory errors the allocator raised
GPU_TORCH_ALLOC_CONF = "gpu.torch.alloc_conf"  # PYTORCH_CUDA_ALLOC_CONF (expandable_segments, ...)

# vLLM: the per-request latency breakdown, as vLLM computes it (seconds), and engine layout
VLLM_QUEUE_TIME = "vllm.request.queue_time"
VLLM_PREFILL_TIME = "vllm.request.prefill_time"
VLLM_DECODE_TIME = "vllm.request.decode_time"
VLLM_NUM_PREEMPTIONS = "vllm.request.num_preemptions"
VLLM_PROMPT_INDEX = "vllm.request.prompt_index"  # which prompt of a multi-prompt completions request
# The request's KV-cache footprint at its peak (its end): paged blocks, their bytes over all
# tensor-parallel ranks, and how many of them it shared from the prefix cache
VLLM_REQUEST_KV_BLOCKS = "vllm.request.kv_cache.blocks"
VLLM_REQUEST_KV_BYTES = "vllm.request.kv_cache.bytes"
VLLM_REQUEST_KV_SHARED_BLOCKS = "vllm.request.kv_cache.shared_blocks"
# The engine's KV cache: block size (tokens), capacity in blocks and in bytes (all TP ranks)
VLLM_KV_BLOCK_SIZE = "vllm.kv_cache.block_size"
VLLM_KV_CAPACITY_BLOCKS = "vllm.kv_cache.capacity.blocks"
VLLM_KV_CAPACITY_BYTES = "vllm.kv_cache.capacity.bytes"
# The engine's memory as its workers hold it (bytes; on spans the total over ranks, as gauges per
# `vllm.rank`): weights, vLLM's profiled activation peak, its CUDA graphs (the last two CUDA-only)
VLLM_ENGINE_MEMORY_WEIGHTS = "vllm.engine.memory.weights"
VLLM_ENGINE_MEMORY_ACTIVATION_PEAK = "vllm.engine.memory.activation_peak"
VLLM_ENGINE_MEMORY_CUDA_GRAPHS = "vllm.engine.memory.cuda_graphs"
VLLM_RANK = "vllm.rank"
# The request's share of the engine steps it was scheduled in (seconds: each step's duration split
# in proportion to scheduled tokens) and its analytic FLOPs (vLLM's performance model, all ranks)
VLLM_REQUEST_COMPUTE_TIME = "vllm.request.compute_time"
VLLM_REQUEST_FLOPS = "vllm.request.flops"
VLLM_TENSOR_PARALLEL_SIZE = "vllm.parallel.tensor_parallel_size"
VLLM_PIPELINE_PARALLEL_SIZE = "vllm.parallel.pipeline_parallel_size"
VLLM_BATCH_REQUESTS = "vllm.batch.requests"
VLLM_BATCH_INPUT_TOKENS = "vllm.batch.input_tokens"
VLLM_BATCH_OUTPUT_TOKENS = "vllm.batch.output_tokens"

# Hugging Face specifics
HF_PIPELINE_TASK = "huggingface.pipeline.task"
HF_PIPELINE_INPUTS = "huggingface.pipeline.inputs"
HF_NUM_BEAMS = "huggingface.generation.num_beams"
HF_DO_SAMPLE = "huggingface.generation.do_sample"

# Metric instruments
METRIC_OPERATION_DURATION = "gen_ai.client.operation.duration"
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
METRIC_SERVER_REQUEST_DURATION = "gen_ai.server.request.duration"
METRIC_SERVER_TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"
METRIC_SERVER_TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"
VLLM_KV_CACHE_USAGE = "vllm.kv_cache.usage"
