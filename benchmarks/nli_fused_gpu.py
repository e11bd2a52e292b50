"""Throughput of the fused NLI path on a GPU: packed Triton encoder vs Hugging Face padded forwards.

    python benchmarks/nli_fused_gpu.py                  # on a CUDA machine, both models (~5 min, H100)
    python benchmarks/nli_fused_gpu.py --cuda-graphs    # also the CUDA-graph bucket variant
    TRITON_INTERPRET=1 python benchmarks/nli_fused_gpu.py --smoke   # CPU: tiny shapes, runs end to end

Models: random-weight models with the shapes of MiniCheck-RoBERTa-large (roberta-large: 24 layers,
hidden 1024, 16 heads) and cross-encoder/nli-deberta-v3-base (12 layers, hidden 768, 12 heads,
relative attention with 256 position buckets), built locally from configs: nothing is downloaded,
and throughput does not depend on the weights' values.

Workload: (chunk, claim) pairs with the length distribution of QAGS-XSum scored the way the scorer
does it: each document cut at sentence ends into chunks of at most min(400, 512 - 4 - claim)
tokens, each summary paired with every chunk of its document. Token counts are estimated without a
tokenizer (words and punctuation marks x 1.2, about RoBERTa's BPE rate on news English). The lengths
come from ../shared/data/qags_xsum.json (relative to the repository root) when it is there, else
from `BUILTIN_HISTOGRAM`, which is that file's pair lengths by this same estimator in 32-token bins
(422 pairs of 239 items, mean 314 tokens). `--pairs` pairs are drawn from that distribution
(seeded), sorted by length as the scorer sorts them (`--order random` keeps the drawn order: the
padded variants then pad much more), and cut into batches of `--batch-size` pairs;
every variant runs exactly the same batches, with inputs already on the device.

Variants
- hf-eager-fp32: Hugging Face eager attention, fp32 weights, right-padded batches.
- hf-sdpa-bf16: bf16 weights, `attn_implementation="sdpa"` (DeBERTa-v2 has no SDPA path in
  transformers: it runs eager there, and the table says so), right-padded batches.
- fused: `FusedEncoder` in bf16, packed without padding; attention `auto` (torch's `varlen_attn`,
  FlashAttention-2, where it exists); `fused-triton` forces this package's Triton attention kernel
  (BERT/RoBERTa family); `fused-graphs` (with `--cuda-graphs`) replays CUDA graphs per bucket.
A pass scores every pair and ends in the per-claim maximum and per-response mean (vectorized
PyTorch, the same for every variant). Each variant: one untimed warm-up pass over all
batches (Triton compiles, cuBLAS picks its kernels),
then `--repeats` timed passes, variants alternated pass by pass; a pass is timed with CUDA events
(perf_counter on the CPU). Reported: the median pass in pairs/s, the quartiles, ratios to both HF
variants, and the roofline: useful matmul FLOPs per pair (real tokens only: projections, FFN,
attention products; `fi_evals_core.evals.fused.encoder.count_flops`) over the card's bf16 matmul
rate measured here (an 8192^3 bf16 matmul), i.e. the pairs/s no implementation can beat, and how
far from it each variant is. Before timing, the fused path is checked against HF eager fp32 on the
first batch: in fp32 (must agree within 1e-4 relative) and in bf16 (printed).

Measured results (date, card, command): benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "packages" / "fi_evals_core" / "src"

import torch  # noqa: E402


def fused_modules():
    """`fi_evals_core.evals.fused`'s encoder from this checkout, without running
    `fi_evals_core/__init__.py`: that imports the OpenTelemetry SDK, which GPU images may lack, and
    the fused path needs only torch, triton and transformers. The parent packages are stood in by
    bare package modules pointing at their folders."""
    import types

    package = SRC / "fi_evals_core"
    for name, folder in (("fi_evals_core", package), ("fi_evals_core.evals", package / "evals")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(folder)]
            sys.modules[name] = module
    from fi_evals_core.evals.fused import encoder

    return encoder

DATA = REPO.parent / "shared" / "data" / "qags_xsum.json"
# QAGS-XSum pair lengths (tokens, estimated as below) in 32-token bins: {bin start: pairs}
BUILTIN_HISTOGRAM = {32: 7, 64: 21, 96: 30, 128: 22, 160: 19, 192: 9, 224: 19, 256: 7, 288: 20, 320: 20,
                     352: 51, 384: 123, 416: 74}
SPECIAL_TOKENS = 4  # <s> A </s></s> B </s>
CHUNK_TOKENS = 400
MAX_LENGTH = 512


def estimate_tokens(text: str) -> int:
    return max(1, round(len(re.findall(r"\w+|[^\w\s]", text)) * 1.2))


def pair_lengths_from_items(items: list[dict]) -> list[int]:
    lengths = []
    for item in items:
        claim = min(estimate_tokens(item["summary"]), (MAX_LENGTH - SPECIAL_TOKENS) // 2)
        budget = min(CHUNK_TOKENS, MAX_LENGTH - SPECIAL_TOKENS - claim)
        chunks, current = [], 0
        for sentence in re.split(r"(?<=[.!?])\s+", item["document"]):
            n = estimate_tokens(sentence) if sentence.strip() else 0
            while n > budget:  # a sentence longer than a chunk: whole windows of it
                if current:
                    chunks.append(current)
                    current = 0
                chunks.append(budget)
                n -= budget
            if current + n > budget:
                chunks.append(current)
                current = 0
            current += n
        if current:
            chunks.append(current)
        lengths += [chunk + claim + SPECIAL_TOKENS for chunk in chunks]
    return lengths


def length_distribution() -> tuple[list[int], str]:
    if DATA.exists():
        return pair_lengths_from_items(json.loads(DATA.read_text())), f"{DATA.name} (estimated token counts)"
    pool = [start + offset for start, count in BUILTIN_HISTOGRAM.items() for offset in
            (round((i + 0.5) * 32 / count) % 32 for i in range(count))]
    return pool, "built-in QAGS-XSum histogram"


# -- models -------------------------------------------------------------------------------------


def build_model(kind: str, smoke: bool, device: torch.device):
    from transformers import (
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    if kind == "roberta-large":
        shape = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                     vocab_size=50265, max_position_embeddings=514)
        if smoke:
            shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                         vocab_size=1000, max_position_embeddings=66)
        config = RobertaConfig(type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                               num_labels=2, **shape)
        cls = RobertaForSequenceClassification
    elif kind == "deberta-v3-base":
        shape = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     vocab_size=128100, max_position_embeddings=512, position_buckets=256)
        if smoke:
            shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                         vocab_size=1000, max_position_embeddings=64, position_buckets=32)
        config = DebertaV2Config(relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=True,
                                 norm_rel_ebd="layer_norm", max_relative_positions=-1,
                                 position_biased_input=False,
                                 type_vocab_size=0, layer_norm_eps=1e-7, pooler_hidden_act="gelu",
                                 pad_token_id=0, num_labels=3, **shape)
        cls = DebertaV2ForSequenceClassification
    else:
        raise SystemExit(f"unknown model {kind!r}")
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(config)
    return model.eval()


def with_attention(model, dtype: torch.dtype, implementation: str):
    """A copy of `model` in `dtype` with the attention implementation set (eager where unsupported)."""
    copy_ = copy.deepcopy(model).to(dtype).eval()
    try:
        copy_.set_attn_implementation(implementation)
    except (ValueError, ImportError, NotImplementedError):
        pass
    if copy_.config._attn_implementation != implementation:  # DeBERTa-v2: logged, left eager
        return copy_, "eager (transformers has no SDPA for this model)"
    return copy_, implementation


# -- inputs -------------------------------------------------------------------------------------


def make_batches(model, lengths: list[int], batch_size: int, device: torch.device, seed: int):
    """Length-sorted batches, each as padded HF inputs and as packed fused inputs (same tokens)."""
    pack = fused_modules().pack

    g = torch.Generator().manual_seed(seed)
    vocab, pad = model.config.vocab_size, model.config.pad_token_id
    typed = getattr(model.config, "type_vocab_size", 0) > 1
    batches = []
    for first in range(0, len(lengths), batch_size):
        chunk = lengths[first:first + batch_size]
        seqs = [torch.randint(3, vocab, (n,), generator=g) for n in chunk]
        types = [torch.cat([torch.zeros(n - n // 4, dtype=torch.long), torch.ones(n // 4, dtype=torch.long)])
                 for n in chunk] if typed else None
        width = max(chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
        padded = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if typed:
            tt = torch.zeros_like(ids)
            for i, t in enumerate(types):
                tt[i, :len(t)] = t
            padded["token_type_ids"] = tt.to(device)
        batches.append({"padded": padded, "packed": pack(seqs, None, types, device), "lengths": chunk})
    return batches


# -- timing -------------------------------------------------------------------------------------


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin


def matmul_rate(device: torch.device, smoke: bool) -> tuple[float, str]:
    """Measured dense matmul FLOP/s: bf16 8192^3 on the GPU (the roofline's denominator)."""
    timer = Timer(device)
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = (256 if smoke else 2048), torch.float32, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = [timer(lambda: a @ b) for _ in range(reps)]
    return 2 * n ** 3 / statistics.median(times), f"{str(dtype).split('.')[-1]} {n}^3 matmul"


def torch_head(logits, support, contradiction, pair_claim, claim_response):
    """The aggregation in vectorized PyTorch: max support per claim, mean per response."""
    probs = torch.softmax(logits.float(), dim=-1)
    n_claims = claim_response.numel()
    claim = torch.zeros(n_claims, device=logits.device).scatter_reduce(
        0, pair_claim, probs[:, support], "amax", include_self=False)
    if contradiction is not None:  # computed as the scorer does (the scores use support only)
        torch.zeros(n_claims, device=logits.device).scatter_reduce(
            0, pair_claim, probs[:, contradiction], "amax", include_self=False)
    n_responses = n_claims and int(claim_response[-1]) + 1
    total = torch.zeros(n_responses, dtype=torch.float64, device=logits.device).index_add_(
        0, claim_response, claim.double())
    return total / torch.bincount(claim_response, minlength=n_responses).clamp(min=1)


_STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:6.1f}s] {message}", flush=True)


def relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def run_model(kind: str, args, device: torch.device, lengths: list[int], rate: float) -> dict:
    """Build, check and time every variant on one model shape. A variant that fails (to build, to
    run, or to compile its kernels) is reported with its error and left out: the run goes on."""
    encoder = fused_modules()
    FusedEncoder, CudaGraphEncoder = encoder.FusedEncoder, encoder.CudaGraphEncoder
    count_flops = encoder.count_flops

    half = torch.bfloat16
    base = build_model(kind, args.smoke, device)
    batches = make_batches(base, lengths, args.batch_size, device, args.seed)
    n_pairs = len(lengths)
    flops = count_flops(base.config, lengths)
    log(f"{kind}: model and {len(batches)} batches built")

    def hf_variant(model):
        return lambda b: model(**b["padded"]).logits

    def build_variants() -> dict:
        """name -> (factory returning (forward, description))"""
        def sdpa():
            model, note = with_attention(base, half, "sdpa")
            return hf_variant(model), f"{note}, bf16, padded"

        bf16 = copy.deepcopy(base).to(half).eval()

        def fused(attention="auto"):
            def make():
                encoder = FusedEncoder(bf16, attention=attention)
                how = (f"packed, bf16, attention {encoder.attention}" if encoder.family != "deberta-v2" else
                       "packed, bf16, disentangled attention core padded in PyTorch")
                return (lambda b: encoder.forward_packed(b["packed"])), how
            return make

        def graphs():
            graphed = CudaGraphEncoder(FusedEncoder(bf16), token_step=args.token_step,
                                       capture=device.type == "cuda")
            return (lambda b: graphed.forward_packed(b["packed"]),
                    f"packed, bf16, CUDA graphs per {args.token_step}-token bucket")

        out = {"hf-eager-fp32": lambda: (hf_variant(base), "eager, fp32, padded"), "hf-sdpa-bf16": sdpa,
               "fused": fused()}
        family = FusedEncoder(base).family
        if family != "deberta-v2":
            out["fused-triton"] = fused("triton")
            if args.cuda_graphs:
                out["fused-graphs"] = graphs
        return out

    variants: dict[str, tuple] = {}
    errors: dict[str, str] = {}
    for name, make in build_variants().items():
        try:
            variants[name] = make()
        except Exception as exc:  # reported in the table; the other variants still run
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
    if variants.get("fused") and variants.get("fused-triton") and "triton" in variants["fused"][1]:
        del variants["fused-triton"]  # `auto` already chose the Triton kernel

    # correctness on the first batch, before any timing
    check: dict[str, float] = {}
    first = batches[0]
    with torch.inference_mode():
        ref = base(**first["padded"]).logits.float()
        try:
            fp32_out = FusedEncoder(base, attention="triton").forward_packed(first["packed"])
            check["fused-fp32 vs hf-eager-fp32"] = relative(fp32_out, ref)
        except Exception as exc:
            errors["fused-fp32 check"] = f"{type(exc).__name__}: {exc}"[:300]
        for name, (fn, _) in list(variants.items()):
            if name == "hf-eager-fp32":
                continue
            try:
                check[f"{name} vs hf-eager-fp32"] = relative(fn(first), ref)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                del variants[name]
    ok = check.get("fused-fp32 vs hf-eager-fp32", math.inf) <= 1e-4
    log(f"{kind}: checked, fp32 {'ok' if ok else 'FAILED'}")

    # every pass ends in the per-claim / per-response aggregation (two chunks per claim, one claim
    # per response as in QAGS-XSum), in PyTorch ops for every variant
    support, contradiction = 1, (0 if base.config.num_labels == 3 else None)
    pair_claim = torch.arange(n_pairs, device=device) // 2
    claim_response = torch.arange((n_pairs + 1) // 2, device=device)

    def head(name, logits):
        return torch_head(logits, support, contradiction, pair_claim, claim_response)

    timer = Timer(device)
    samples: dict[str, list[float]] = {name: [] for name in variants}

    def one_pass(name, fn):
        def go():
            head(name, torch.cat([fn(b) for b in batches]))
        return go

    with torch.inference_mode():
        for name, (fn, _) in list(variants.items()):  # warm-up
            try:
                one_pass(name, fn)()
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                del variants[name], samples[name]
        log(f"{kind}: warmed up")
        for _ in range(args.repeats):
            for name, (fn, _) in variants.items():
                samples[name].append(timer(one_pass(name, fn)))

    roofline = n_pairs / (flops / rate)
    rows = []
    for name, times in samples.items():
        median = statistics.median(times)
        q = statistics.quantiles(times, n=4) if len(times) >= 2 else [median, median, median]
        rows.append({"variant": name, "how": variants[name][1], "seconds": median, "q1": q[0], "q3": q[-1],
                     "pairs_per_s": n_pairs / median})
    by = {r["variant"]: r["pairs_per_s"] for r in rows}
    for r in rows:
        r["vs_eager_fp32"] = r["pairs_per_s"] / by["hf-eager-fp32"] if "hf-eager-fp32" in by else math.nan
        r["vs_sdpa_bf16"] = r["pairs_per_s"] / by["hf-sdpa-bf16"] if "hf-sdpa-bf16" in by else math.nan
        r["of_roofline"] = r["pairs_per_s"] / roofline
    return {"model": kind, "pairs": n_pairs, "batches": len(batches), "batch_size": args.batch_size,
            "mean_tokens": sum(lengths) / n_pairs, "gflop_per_pair": flops / n_pairs / 1e9,
            "roofline_pairs_per_s": roofline, "check": check, "check_ok": ok, "errors": errors, "rows": rows}


def print_model(result: dict) -> None:
    print(f"\n## {result['model']}: {result['pairs']} pairs in {result['batches']} batches of "
          f"{result['batch_size']}, mean {result['mean_tokens']:.0f} tokens, "
          f"{result['gflop_per_pair']:.1f} GFLOP per pair; "
          f"roofline {result['roofline_pairs_per_s']:.0f} pairs/s")
    for name, err in result["check"].items():
        print(f"   check {name}: relative error {err:.2e}")
    print(f"   fp32 check {'PASSED' if result['check_ok'] else 'FAILED'} (<= 1e-4)")
    for name, error in result["errors"].items():
        print(f"   ERROR {name}: {error}")
    print("| variant | how | pairs/s | median s (q1-q3) | vs eager fp32 | vs sdpa bf16 | of roofline |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in result["rows"]:
        print(f"| {r['variant']} | {r['how']} | {r['pairs_per_s']:.1f} | {r['seconds']:.3f} "
              f"({r['q1']:.3f}-{r['q3']:.3f}) | {r['vs_eager_fp32']:.2f}x | {r['vs_sdpa_bf16']:.2f}x | "
              f"{100 * r['of_roofline']:.0f}% |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="roberta-large,deberta-v3-base")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", choices=("sorted", "random"), default="sorted",
                        help="batch pairs sorted by length (as the scorer does) or in drawn order "
                             "(more padding)")
    parser.add_argument("--cuda-graphs", action="store_true", help="also time CUDA graphs per length bucket")
    parser.add_argument("--token-step", type=int, default=2048, help="CUDA-graph bucket size in tokens")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models and lengths on the CPU (needs TRITON_INTERPRET=1): checks it runs")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    if args.smoke:
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and not torch.cuda.is_available():
            raise SystemExit("--smoke on the CPU needs TRITON_INTERPRET=1")
        args.pairs, args.batch_size = min(args.pairs, 4), min(args.batch_size, 2)
        args.repeats = min(args.repeats, 1)
        args.token_step = 64
        args.cuda_graphs = True
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise SystemExit("no CUDA device: run with --smoke (and TRITON_INTERPRET=1) to check the script "
                         "on a CPU")

    pool, source = length_distribution()
    rnd = random.Random(args.seed)
    lengths = [rnd.choice(pool) for _ in range(args.pairs)]
    if args.smoke:  # the same shape of distribution, scaled to 64 positions
        lengths = [max(2, round(n * 64 / MAX_LENGTH)) for n in lengths]
    if args.order == "sorted":
        lengths.sort()
    rate, how = matmul_rate(device, args.smoke)
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke run, Triton interpreter)"
    print(f"# NLI fused path vs Hugging Face, {card}")
    print(f"torch {torch.__version__}; lengths: {source}, batches in {args.order} order; "
          f"measured {how}: {rate / 1e12:.1f} TFLOP/s")
    results = {"device": card, "torch": torch.__version__, "lengths": source, "order": args.order,
               "matmul_flops": rate, "models": []}
    for kind in args.models.split(","):
        result = run_model(kind.strip(), args, device, lengths, rate)
        print_model(result)
        results["models"].append(result)
        if args.json:  # after each model: a later failure keeps what was measured
            Path(args.json).write_text(json.dumps(results, indent=1))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n## summary ({card}, median pairs/s; roofline = useful FLOPs at the measured bf16 matmul rate)")
    print("| model | variant | pairs/s | vs eager fp32 | vs sdpa bf16 | of roofline |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for result in results["models"]:
        for r in result["rows"]:
            print(f"| {result['model']} | {r['variant']} | {r['pairs_per_s']:.1f} | "
                  f"{r['vs_eager_fp32']:.2f}x | {r['vs_sdpa_bf16']:.2f}x | {100 * r['of_roofline']:.0f}% |")
    failed = [r["model"] for r in results["models"] if not r["check_ok"]]
    if failed:
        print(f"\nFAILED: fused fp32 logits differ from HF eager fp32 beyond 1e-4 for {failed}")
    broken = [f"{r['model']}: {name}" for r in results["models"] for name in r["errors"]]
    if broken:
        print(f"\nFAILED variants (see ERROR lines): {broken}")
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
