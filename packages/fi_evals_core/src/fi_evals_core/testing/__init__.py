"""Builders shared by the test suite, the demo (`examples/demo.py`) and the benchmarks.

Everything here runs without network access (beyond 127.0.0.1), so callers exercise real code paths
(real tokenizers, real transformers models, real HTTP, real OTLP export) instead of mocks:

* `tiny_models`: tiny, randomly initialised GPT-2, Llama and T5 checkpoints with a locally trained
  tokenizer, saved with `save_pretrained` (`build_gpt2`, `build_llama`, `build_t5`).
* `tiny_nli`: tiny random BERT / RoBERTa / DeBERTa-v2 NLI classifiers (`build_nli_checkpoint`).
* `hf_server`: a real local HTTP inference server speaking TGI, TEI and OpenAI chat (`HFServer`),
  backed by a tiny transformers model, with fault injection for error paths.
* `collector`: the real rotel OTLP collector (`RotelCollector`, gRPC and HTTP receivers) with typed
  read-back of the spans, metric points and log records it received.
* `png`: a minimal PNG decoder for checking screenshots; `triton_aot`: compiles the fused NLI
  kernels for NVIDIA GPUs without one (`python -m fi_evals_core.testing.triton_aot 90 80:bf16`).

Importing `fi_evals_core.testing` stays light: this package imports none of its modules, and the heavy
dependencies (torch, transformers, tokenizers, rotel) are imported inside the functions that need
them, so they load only when a model is built, a server started or a collector run. Import the
module you need: `from fi_evals_core.testing.tiny_models import build_llama`.
"""
