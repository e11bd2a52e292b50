"""Demo: instrumented Hugging Face generation, one line of set-up, a table per request.

    python examples/demo.py                      # a tiny RANDOM-WEIGHT model built locally, spans to a JSONL file
    python examples/demo.py --model gpt2         # a real model (hub id or local path)
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 python examples/demo.py   # spans to your collector

The one line that matters is `register()`; everything after it is ordinary transformers and vLLM
code. With no `--model` and no `FI_EVALS_MODEL`, the demo also turns on inline evaluation of every
completion with a tiny RANDOM-WEIGHT NLI model (its scores are meaningless; the mechanics are real).
What the libraries themselves print while they work (vLLM's engine log, progress bars, warnings) goes
to a log file named at the end, so the table stands alone; traceai's own start-up line stays.
"""

from __future__ import annotations

import argparse
import contextlib
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

    third_party_log = Path(tempfile.mkdtemp(prefix="traceai-demo-log-")) / "libraries.log"
    if not args.model and "FI_EVALS_MODEL" not in os.environ:
        with _output_to(third_party_log):
            _random_nli_for_inline_evaluation()
        print("inline evaluation: every completion, scored by a tiny NLI model with RANDOM weights "
              "(meaningless scores, real mechanics)")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the evaluator's model loads in the background meanwhile
    telemetry = register(service_name="traceai-demo")  # <- the one line
    shown = InMemorySpanExporter()  # a second, in-process copy of the spans, only to print the table
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(shown))
    with_vllm = not args.no_vllm and importlib.util.find_spec("vllm") is not None
    if args.model:
        print(f"model: {args.model}")
    else:
        print("model: a tiny Llama with RANDOM weights, built locally (its text is gibberish, its tokens are real)")
    print("running: transformers generate (a padded batch, a streamed call), a text-generation pipeline"
          + (", and the same model on an in-process vLLM engine" if with_vllm else "") + " ...")
    with _output_to(third_party_log):
        model_label = _run(args, with_vllm)

    telemetry.force_flush()
    finished = shown.get_finished_spans()
    spans = sorted((s for s in finished if s.instrumentation_scope.name in ("traceai_huggingface", "traceai_vllm")),
                   key=lambda s: s.start_time)
    evaluations = {s.parent.span_id: s for s in finished if s.name.startswith("evaluation ") and s.parent}
    print()
    print(_table(spans, evaluations, model_label))
    print(f"\n{len(spans)} spans went to {telemetry.destination}")
    if evaluations:
        print(f"{len(evaluations)} evaluation results went there too, each a child span of the request it scored")
    print("to send them to your collector instead: OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 make demo")
    print(f"what the libraries printed meanwhile: {third_party_log}")
    telemetry.shutdown()
    return 0


def _run(args: argparse.Namespace, with_vllm: bool) -> str:
    """Ordinary transformers (and vLLM) code: nothing here knows about telemetry."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer, pipeline

    if args.model:
        source = label = args.model
    else:
        from fi_evals_core.testing.tiny_models import build_llama

        source = build_llama(Path(tempfile.mkdtemp(prefix="traceai-demo-")) / "tiny-llama")
        label = str(source)
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
    "".join(streamer)
    worker.join()
    # 3. a text-generation pipeline (one pipeline span parenting its generate span)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    generator("A pipeline call", max_new_tokens=n, do_sample=False)
    # 4. vLLM, when it is installed: the same model on an in-process engine
    if with_vllm:
        _run_vllm(source, n)
    return label


@contextlib.contextmanager
def _output_to(path: Path):
    """Everything written to this process's stdout and stderr (Python, C++, subprocesses) goes to
    `path` for the block: the libraries' logs and progress bars, not the demo's table."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _random_nli_for_inline_evaluation() -> None:
    from fi_evals_core.testing.tiny_nli import build_nli_checkpoint

    path = build_nli_checkpoint(Path(tempfile.mkdtemp(prefix="traceai-demo-nli-")) / "tiny-nli", "bert")
    os.environ.update({"FI_EVALS_MODEL": str(path), "FI_EVALS_DEVICE": "cpu"})
    os.environ.setdefault("FI_EVALS_SAMPLE_RATE", "1")
    os.environ.setdefault("FI_EVALS_EVALUATORS", "groundedness")


def _run_vllm(source, max_tokens: int) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process for a demo
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(source), dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=4,
              kv_cache_memory_bytes=64 * 2**20, disable_log_stats=False)
    llm.generate(["The quick brown fox", "Serving with vLLM"], SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                 use_tqdm=False)


def _table(spans, evaluations, model_label: str) -> str:
    header = ("span", "engine", "tokens in", "tokens out", "TTFT ms", "tokens/s", "GPU memory", "framework",
              "evaluation")
    rows = [header]
    for span in spans:
        a = span.attributes
        gpu = (f"{a[A.GPU_TORCH_ALLOCATED] / 2**20:.0f} MiB alloc" if A.GPU_TORCH_ALLOCATED in a else "no GPU")
        framework = " ".join(str(a[k]) for k in (A.MODEL_FRAMEWORK, A.MODEL_FRAMEWORK_VERSION, A.MODEL_DTYPE,
                                                  A.MODEL_DEVICE) if k in a)
        ttft = a.get(A.RESPONSE_TIME_TO_FIRST_CHUNK)
        tps = a.get(A.OUTPUT_TOKENS_PER_SECOND)
        result = evaluations.get(span.context.span_id)
        evaluation = "-"
        if result is not None:
            r = result.attributes
            score = r.get("gen_ai.evaluation.score.value")
            evaluation = (f"{r.get('gen_ai.evaluation.name', '')} {r.get('gen_ai.evaluation.score.label', 'error')}"
                          + (f" {score:.2f}" if score is not None else ""))
        rows.append((
            span.name.replace(model_label, Path(model_label).name)[:40],
            "vllm" if span.instrumentation_scope.name == "traceai_vllm" else "transformers",
            str(a.get(A.USAGE_INPUT_TOKENS, "-")),
            str(a.get(A.USAGE_OUTPUT_TOKENS, "-")),
            f"{ttft * 1000:.1f}" if ttft is not None else "-",
            f"{tps:.0f}" if tps is not None else "-",
            gpu if span.name.startswith("text_completion") and A.MODEL_DEVICE in a else "-",
            framework or "-",
            evaluation,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
