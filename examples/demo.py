"""Demo: instrumented Hugging Face generation, one line of set-up, a table per request.

    python examples/demo.py                      # a tiny RANDOM-WEIGHT model built locally, spans to a JSONL file
    python examples/demo.py --model gpt2         # a real model (hub id or local path)
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 python examples/demo.py   # spans to your collector

The one line that matters is `register()`; everything after it is ordinary transformers code.
With no `--model` and no `FI_EVALS_MODEL`, the demo also turns on inline evaluation of every
completion with a tiny RANDOM-WEIGHT NLI model (its scores are meaningless; the mechanics are real).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fi_evals_core import register
from fi_evals_core.telemetry import attributes as A


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="hub id or local path of a causal LM (default: a tiny random model)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM part even if vLLM is installed")
    args = parser.parse_args()

    if not args.model and "FI_EVALS_MODEL" not in os.environ:
        _random_nli_for_inline_evaluation()
    telemetry = register(service_name="traceai-demo")  # <- the one line
    shown = InMemorySpanExporter()  # a second, in-process copy of the spans, only to print the table
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(shown))

    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer, pipeline

    if args.model:
        source, label = args.model, args.model
    else:
        from fi_evals_core.testing.tiny_models import build_llama

        source = build_llama(Path(tempfile.mkdtemp(prefix="traceai-demo-")) / "tiny-llama")
        label = "tiny Llama with RANDOM weights (built locally; its text is gibberish, its tokens are real)"
    print(f"model: {label}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    n = args.max_new_tokens

    # 1. plain generate on a padded batch of two prompts
    batch = tokenizer(["The quick brown fox", "Observability for model serving means"], return_tensors="pt",
                      padding=True)
    model.generate(**batch, max_new_tokens=n, do_sample=False)
    # 2. streamed: generate in a thread, text consumed here as it arrives
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    single = tokenizer("Streaming tokens one by one", return_tensors="pt")
    worker = threading.Thread(target=model.generate, kwargs=dict(**single, max_new_tokens=n, streamer=streamer))
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    # 3. a text-generation pipeline (one pipeline span parenting its generate span)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    generator("A pipeline call", max_new_tokens=n, do_sample=False)

    # 4. vLLM, when it is installed: the same model served by an in-process engine
    if not args.no_vllm and importlib.util.find_spec("vllm") is not None:
        _run_vllm(source, n)

    telemetry.force_flush()
    spans = sorted(shown.get_finished_spans(), key=lambda s: s.start_time)
    spans = [s for s in spans if s.instrumentation_scope.name in ("traceai_huggingface", "traceai_vllm")]
    print(f"\nstreamed {len(streamed)} characters\n")
    print(_table(spans))
    print(f"\n{len(spans)} spans went to {telemetry.destination}")
    if telemetry.completion_sink is not None:
        _print_evaluations(shown.get_finished_spans(), spans)
    telemetry.shutdown()
    return 0


def _random_nli_for_inline_evaluation() -> None:
    from fi_evals_core.testing.tiny_nli import build_nli_checkpoint

    path = build_nli_checkpoint(Path(tempfile.mkdtemp(prefix="traceai-demo-nli-")) / "tiny-nli", "bert")
    os.environ.update({"FI_EVALS_MODEL": str(path), "FI_EVALS_DEVICE": "cpu"})
    os.environ.setdefault("FI_EVALS_SAMPLE_RATE", "1")
    os.environ.setdefault("FI_EVALS_EVALUATORS", "groundedness")
    print("inline evaluation: every completion, scored by a tiny NLI model with RANDOM weights "
          "(meaningless scores, real mechanics)")


def _print_evaluations(all_spans, request_spans) -> None:
    by_id = {s.context.span_id: s for s in request_spans}
    results = [s for s in all_spans if s.name.startswith("evaluation ")]
    print(f"\n{len(results)} evaluation results, each a child span of the request it scored:")
    for span in results:
        a = span.attributes
        parent = by_id.get(span.parent.span_id) if span.parent else None
        score = a.get("gen_ai.evaluation.score.value")
        print(f"  {span.name:<24} {a.get('gen_ai.evaluation.score.label', 'error'):<5} "
              f"score {score if score is None else round(score, 2)}  under {parent.name if parent else '?'}")


def _run_vllm(source, max_tokens: int) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process for a demo
    from vllm import LLM, SamplingParams

    print("vLLM is installed: serving the same model with an in-process vLLM engine (float32, CPU-safe settings)")
    llm = LLM(model=str(source), dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=4,
              kv_cache_memory_bytes=64 * 2**20, disable_log_stats=False)
    llm.generate(["The quick brown fox", "Serving with vLLM"], SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                 use_tqdm=False)


def _table(spans) -> str:
    header = ("span", "tokens in", "tokens out", "TTFT ms", "tokens/s", "GPU memory", "framework")
    rows = [header]
    for span in spans:
        a = span.attributes
        gpu = (f"{a[A.GPU_TORCH_ALLOCATED] / 2**20:.0f} MiB alloc" if A.GPU_TORCH_ALLOCATED in a else "no GPU")
        framework = " ".join(str(a[k]) for k in (A.MODEL_FRAMEWORK, A.MODEL_FRAMEWORK_VERSION, A.MODEL_DTYPE,
                                                  A.MODEL_DEVICE) if k in a)
        ttft = a.get(A.RESPONSE_TIME_TO_FIRST_CHUNK)
        tps = a.get(A.OUTPUT_TOKENS_PER_SECOND)
        model = str(a.get(A.REQUEST_MODEL, ""))
        rows.append((
            span.name.replace(model, Path(model).name if "/" in model else model)[:44],
            str(a.get(A.USAGE_INPUT_TOKENS, "-")),
            str(a.get(A.USAGE_OUTPUT_TOKENS, "-")),
            f"{ttft * 1000:.1f}" if ttft is not None else "-",
            f"{tps:.0f}" if tps is not None else "-",
            gpu if span.name.startswith("text_completion") and A.MODEL_DEVICE in a else "-",
            framework or "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
