"""NLI factual-consistency throughput on CPU: this project's scorer against FutureAGI's local method.

The workload (issue 4, section 6): the first 40 QAGS-XSum items, the summary as the response and the
document as the reference, scored by a random-weight model with the exact architecture of
`cross-encoder/nli-deberta-v3-base` (built locally, see `build_assets`). Variants, one worker process
each, timed in turn round after round (the order rotates):

* `anchor`: FutureAGI's local `factual_consistency` as published: `pipeline("text-classification")`,
  one (document, claim) pair per call, the premise truncated to 512 tokens, a second call per claim
  for the contradiction probability (the claim is the whole summary: 80 calls for 40 items), fp32.
* `ours-fp32`: `FactualConsistency(scorer=NLIScorer.from_pretrained(..., dtype="float32"))` over the
  same items: whole documents, chunked, every (chunk, claim) pair once, sorted, batched.
* `ours-bf16`: the same with bf16 weights, `MALLOC_MMAP_MAX_=0` and a huge `MALLOC_TRIM_THRESHOLD_` in the
  worker's environment (`ours-bf16-mmap-only`, when named: the first alone).
* `ours-bf16-eager`: `ours-bf16` with the CPU fast paths off (`FI_EVALS_FUSED=0`, the older name of
  `FI_EVALS_ACCELERATION=off`): transformers'
  eager DeBERTa attention (not `fi_evals_core.evals.deberta_cpu`'s) and plain `nn.Linear` (not
  `fi_evals_core.evals.cpu_linear`'s oneDNN-packed weights), for the side-by-side gain.
* `ours-fp32-eager`: only when named.
* `ours-bf16-minicheck`: `ours-bf16` under the `minicheck` scoring profile (MiniCheck's reference
  inference: the summary whole, 400-token chunks without overlap, `chunk + eos + claim` as one
  sequence), on the same random model.

After the timing, the bf16 workers' item scores are compared with `ours-fp32`'s on the same random
model (max abs difference), and the fast path's with the eager path's. The last line is the ratio
of each variant's items/s to the anchor's.

    python benchmarks/nli_throughput.py                 # ~6 min on 2 quiet cores
    python benchmarks/nli_throughput.py --rounds 5 --variants anchor,ours-bf16

Measured results (date, command, machine): benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import REPO_ROOT, WorkerProcess, fmt, median, quartiles  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "qags_xsum.json"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fi-evals-bench"
ASSETS_VERSION = "nli-deberta-v3-base-random-v1"
VOCAB = 8000  # Unigram trained on the 239 QAGS documents: ~1.35 tokens per word, like DeBERTa-v3's SentencePiece
ITEMS = 40

# glibc malloc: never mmap (each large tensor would otherwise be a fresh mapping, page-faulted in on
# every allocation) and never trim the heap (with mmap off, freeing a large tensor at the top of the
# heap returns it to the OS, and the next allocation faults it in again).
MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}
VARIANTS: dict[str, dict[str, Any]] = {
    "anchor": {"dtype": "float32", "env": {}},
    "ours-fp32": {"dtype": "float32", "env": {}},
    "ours-bf16": {"dtype": "bfloat16", "env": MALLOC},
    "ours-bf16-eager": {"dtype": "bfloat16", "env": {**MALLOC, "FI_EVALS_FUSED": "0"}},
    "ours-bf16-mmap-only": {"dtype": "bfloat16", "env": {"MALLOC_MMAP_MAX_": "0"}},
    "ours-fp32-eager": {"dtype": "float32", "env": {"FI_EVALS_FUSED": "0"}},
    "ours-bf16-minicheck": {"dtype": "bfloat16", "env": MALLOC, "profile": "minicheck"},
}
DEFAULT_VARIANTS = "anchor,ours-fp32,ours-bf16,ours-bf16-eager,ours-bf16-minicheck"

# cross-encoder/nli-deberta-v3-base's config.json, less what DebertaV2Config's defaults already say
# (vocab_size 128100, max_position_embeddings 512, layer_norm_eps 1e-7, hidden_act gelu, pad 0,
# max_relative_positions -1, type_vocab_size 0).
ARCH = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            pooler_hidden_size=768, relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False, max_relative_positions=-1,
            type_vocab_size=0, vocab_size=128100, max_position_embeddings=512)
LABELS = ("contradiction", "entailment", "neutral")


# -- data and model -------------------------------------------------------------------------------

def load_items(path: Path, n: int = ITEMS) -> list[dict[str, str]]:
    rows = json.loads(Path(path).read_text())
    return [{"response": r["summary"], "reference": r["document"]} for r in rows[:n]]


def build_assets(data_path: Path, cache: Path) -> Path:
    """The random model and its tokenizer, built once into `cache/ASSETS_VERSION`."""
    target = cache / ASSETS_VERSION
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, PreTrainedTokenizerFast

    tmp = Path(tempfile.mkdtemp(dir=cache.mkdir(parents=True, exist_ok=True) or cache))
    docs = list(dict.fromkeys(r["document"] for r in json.loads(Path(data_path).read_text())))
    # DeBERTa-v3's tokenizer is a SentencePiece Unigram model with the "▁" word-boundary marker.
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("\n", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]  # ids 0..4, as in DeBERTa-v3
    tok.train_from_iterator(docs, trainer=trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=specials,
                                                                   unk_token="[UNK]", show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                 unk_token="[UNK]", mask_token="[MASK]", model_max_length=512)
    hf.save_pretrained(tmp)
    config = DebertaV2Config(**ARCH, num_labels=3, id2label=dict(enumerate(LABELS)),
                             label2id={n: i for i, n in enumerate(LABELS)}, pad_token_id=hf.pad_token_id)
    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(config).eval()
    model.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def tokens_per_word(model_dir: Path, items: list[dict[str, str]]) -> float:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [t for it in items for t in (it["reference"], it["response"])]
    ids = tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return sum(map(len, ids)) / sum(len(t.split()) for t in texts)


# -- worker ---------------------------------------------------------------------------------------

class Anchor:
    """FutureAGI's local factual consistency: one pipeline call per (document, claim) pair and pass."""

    def __init__(self, model_dir: str) -> None:
        from transformers import pipeline

        self.pipe = pipeline("text-classification", model=model_dir, device="cpu", dtype="float32")
        self.tok = self.pipe.tokenizer
        self.calls: list[int] = []

    def _call(self, premise: str, claim: str) -> dict[str, float]:
        out = self.pipe({"text": premise, "text_pair": claim}, top_k=None, truncation=True, max_length=512)
        return {d["label"]: d["score"] for d in out}

    def count(self, items: list[dict[str, str]]) -> dict[str, Any]:
        """Pairs and tokens of one pass, from the tokenizer alone (two calls per item)."""
        lengths = [len(self.tok(it["reference"], it["response"], truncation=True, max_length=512)["input_ids"])
                   for it in items]
        return {"pairs": 2 * len(items), "claims": len(items), "tokens": 2 * sum(lengths)}

    def run(self, items: list[dict[str, str]]) -> list[float]:
        scores = []
        for it in items:
            scores.append(self._call(it["reference"], it["response"])["entailment"])
            self._call(it["reference"], it["response"])  # the second pass, read for contradiction
        return scores


class Ours:
    def __init__(self, model_dir: str, dtype: str, batch_size: int, chunk_tokens: int | None,
                 profile: str | None = None) -> None:
        from fi_evals_core.evals.evaluators import FactualConsistency
        from fi_evals_core.evals.scorer import NLIScorer

        kwargs = {"chunk_tokens": chunk_tokens} if chunk_tokens else {}
        self.scorer = NLIScorer.from_pretrained(model_dir, device="cpu", dtype=dtype, batch_size=batch_size,
                                                profile=profile or "default", **kwargs)
        self.evaluator = FactualConsistency(scorer=self.scorer)

    def count(self, items: list[dict[str, str]]) -> dict[str, Any]:
        """Pairs, claims and tokens of one pass: the scorer's own chunking, with the model call stubbed."""
        counted = [0, 0]
        scorer = self.scorer

        def stub(premises, hypotheses):
            if scorer.profile.joined_input:  # MiniCheck: one sequence per pair
                enc = scorer.tokenizer([p + scorer.eos_token + h for p, h in zip(premises, hypotheses)],
                                       truncation=True, max_length=scorer.max_length)["input_ids"]
            else:
                enc = scorer.tokenizer(list(premises), list(hypotheses), truncation="only_first",
                                       max_length=scorer.max_length)["input_ids"]
            counted[0] += len(enc)
            counted[1] += sum(map(len, enc))
            return [0.0] * len(enc), [0.0] * len(enc)

        scorer.score_pairs = stub  # type: ignore[method-assign]
        try:
            results = self.evaluator.evaluate_batch(items)
        finally:
            del scorer.score_pairs
        return {"pairs": counted[0], "tokens": counted[1], "claims": sum(len(r.claims) for r in results),
                "fast_path": bool(getattr(scorer.model, "_fi_cpu_fast", False)),
                "packed_linears": int(getattr(scorer.model, "_fi_packed_linears", 0))}

    def run(self, items: list[dict[str, str]]) -> list[float]:
        results = self.evaluator.evaluate_batch(items)
        errors = [r.reason for r in results if r.score is None]
        if errors:
            raise RuntimeError(f"{len(errors)} items failed: {errors[0]}")
        return [r.score for r in results]


def worker_main(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    items = load_items(Path(args.data), args.items)
    spec = VARIANTS[args.worker]
    runner: Any = (Anchor(args.model_dir) if args.worker == "anchor"
                   else Ours(args.model_dir, spec["dtype"], args.batch_size, args.chunk_tokens, spec.get("profile")))
    stats = runner.count(items)
    runner.run(items[: args.warmup])  # warm-up: a few items through the real path
    reply: dict[str, Any] = {"ready": True, "threads": torch.get_num_threads(), **stats}
    print(json.dumps(reply), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "quit":
                print(json.dumps({"bye": True}), flush=True)
                return
            if msg["cmd"] == "run":
                start, cpu = time.perf_counter(), time.process_time()
                scores = runner.run(items)
                print(json.dumps({"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                                  "scores": scores}), flush=True)
        except Exception as exc:  # noqa: BLE001 - reported to the driver
            print(json.dumps({"error": repr(exc)}), flush=True)


# -- driver ---------------------------------------------------------------------------------------

def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="QAGS-XSum JSON (default: ../shared/data)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--warmup", type=int, default=4, help="items each worker scores before the timing")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-tokens", type=int, default=0, help="scorer chunk size (0: its default, 400)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in the workers (0: torch's default)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the random model is built once")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", help="write rows and samples here")
    parser.add_argument("--keep", action="store_true", help="keep the workers' logs")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return 0

    data = Path(args.data)
    if not data.exists():
        parser.error(f"{data} not found: pass --data PATH to the QAGS-XSum JSON (ctc-gen-eval's qags_xsum.json)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    items = load_items(data, args.items)
    t0 = time.perf_counter()
    model_dir = build_assets(data, Path(args.cache))
    tpw = tokens_per_word(model_dir, items)
    print(f"model: random {ASSETS_VERSION} at {model_dir} ({time.perf_counter() - t0:.0f} s); "
          f"tokenizer: Unigram {VOCAB}, {tpw:.2f} tokens per word on these {len(items)} items")
    print(f"{len(items)} items, {args.rounds} rounds, batch {args.batch_size}, load {_load():.2f}", flush=True)

    logdir = Path(tempfile.mkdtemp(prefix="nli-bench-"))
    workers: dict[str, WorkerProcess] = {}
    info: dict[str, dict[str, Any]] = {}
    try:
        for v in variants:  # one at a time: loading the model is memory- and CPU-heavy
            env = {**os.environ, **VARIANTS[v]["env"]}
            if "FI_EVALS_FUSED" not in VARIANTS[v]["env"]:
                env.pop("FI_EVALS_FUSED", None)
            cmd = [args.python, str(Path(__file__).resolve()), "--worker", v, "--model-dir", str(model_dir),
                   "--data", str(data), "--items", str(args.items), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                   "--chunk-tokens", str(args.chunk_tokens), "--threads", str(args.threads)]
            workers[v] = WorkerProcess(v, cmd, env, logdir / f"worker-{v}.log")
            info[v] = workers[v].request(None)
            print(f"  {v}: ready, {info[v]['pairs']} pairs, {info[v]['tokens'] / info[v]['pairs']:.0f} tokens/pair"
                  f"{', fast attention' if info[v].get('fast_path') else ''}"
                  f"{', %d packed linears' % info[v]['packed_linears'] if info[v].get('packed_linears') else ''}",
                  flush=True)

        walls: dict[str, list[float]] = {v: [] for v in variants}
        scores: dict[str, list[float]] = {}
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            if r % 2:
                order.reverse()
            for v in order:
                reply = workers[v].request({"cmd": "run"})
                walls[v].append(reply["wall"])
                scores[v] = reply["scores"]
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v} {walls[v][-1]:.2f} s" for v in variants)
                  + f" (load {_load():.1f})", flush=True)
    finally:
        for w in workers.values():
            w.close()
        if args.keep:
            print(f"logs in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)

    n = len(items)
    rows = []
    print()
    print(f"| variant | items/s | claims/s | s per {n} items [q1, q3] | pairs | tokens/pair | vs anchor |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    anchor_ips = n / median(walls["anchor"]) if "anchor" in walls else float("nan")
    for v in variants:
        m = median(walls[v])
        q1, q3 = quartiles(walls[v])
        ips, cps = n / m, info[v]["claims"] / m
        rows.append({"variant": v, "items_per_s": ips, "claims_per_s": cps, "walls": walls[v], **info[v]})
        print(f"| {v} | {ips:.2f} | {cps:.2f} | {m:.2f} [{fmt(q1, '.2f')}, {fmt(q3, '.2f')}] | {info[v]['pairs']} | "
              f"{info[v]['tokens'] / info[v]['pairs']:.0f} | {fmt(ips / anchor_ips, '.2f')}x |")

    print()
    checks = []
    for a, b in (("ours-fp32", "ours-bf16"), ("ours-fp32", "ours-bf16-eager"), ("ours-bf16-eager", "ours-bf16"),
                 ("ours-fp32-eager", "ours-fp32"), ("ours-bf16", "ours-bf16-minicheck")):
        if a in scores and b in scores:
            diff = max(abs(x - y) for x, y in zip(scores[a], scores[b]))
            checks.append({"a": a, "b": b, "max_abs_diff": diff})
            print(f"item scores, {b} vs {a} (same random model): max abs difference {diff:.4f} over {n} items")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "checks": checks, "scores": scores,
                                               "tokens_per_word": tpw}, indent=1))
    if "anchor" in walls:
        print("ratio to the anchor's items/s: " + ", ".join(
            f"{v} {n / median(walls[v]) / anchor_ips:.2f}x" for v in variants if v != "anchor"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
