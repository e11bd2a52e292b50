"""The NLI scorer: every (premise chunk, claim) pair of a call scored in one batched pass.

Why this shape: NLI models see at most ~512 tokens, references are longer, and responses hold
several claims. So a premise is cut at sentence boundaries into chunks that fit beside the longest
claim of its request (with one sentence of overlap, so a fact that straddles a boundary is seen
whole once), each claim is paired with every chunk, and all pairs of all requests of a call are
sorted by length and run in dynamically padded batches under `torch.inference_mode` — one forward
pass per pair, no pass repeated. Per claim, the evaluators then take the best chunk (MiniCheck,
AlignScore) and aggregate over claims.

A claim is never cut. One longer than `max_claim_tokens` (half the window) is split between words
into windows of at most that many tokens; each window is scored against every chunk like a claim,
and the claim's evidence is its weakest window's (the window whose best support is lowest): a long
claim is supported only as far as every part of it is. `ClaimEvidence.windows` says how many.

That is the `default` scoring profile. The `minicheck` and `alignscore` profiles (profiles.py)
chunk and encode as those checkpoints' reference inference does, to reproduce their published
numbers; what they cut is flagged (`ClaimEvidence.truncated`).

Only the current batch's tensors live at once, so a 100,000-word reference is scored whole in
bounded memory: what grows with its length is the list of chunk offsets.

Cutting needs the tokenizer and the profile, not the model: `ScorePlanner.plan` makes a
`RequestPlan` per request (its claim windows and chunks, with token counts) and
`NLIScorer.score_plans` scores plans, so text work can run in CPU tasks apart from the model's
process (Ray). `NLIScorer` is a planner that also scores; `score` is `score_plans(plan(...))`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .config import EvalsConfig, parse_device
from . import profiles
from .labels import LabelScheme
from .profiles import ScoringProfile
from .result import Chunk
from .text import split_sentences

if TYPE_CHECKING:  # torch and transformers come with the `nli` extra
    import torch

DEFAULT_CHUNK_TOKENS = 400  # MiniCheck's chunk size
DEFAULT_BATCH_SIZE = 8
#: Tokens of slack when a pair's estimated length (chunk + claim, each tokenized alone) decides
#: whether a reference profile's encoding of it needs the exact overflow check.
OVERFLOW_MARGIN = 16


@dataclass(frozen=True)
class ScoreRequest:
    """Claims to check against premises (one string, or several passages)."""

    claims: Sequence[str]
    premises: Sequence[str]


@dataclass
class ClaimEvidence:
    """The model's view of one claim: its probabilities against every chunk of the premises."""

    claim: str
    chunks: list[Chunk]
    support: list[float]
    contradiction: list[float] | None  # None for 2-way checkpoints
    windows: int = 1  # a claim longer than the model's claim budget is scored as its weakest window
    truncated: bool = False  # a reference profile cut a pair of this claim at the window, as its reference does

    def best(self) -> int:
        """Index of the chunk that supports the claim most (first on ties)."""
        return max(range(len(self.support)), key=self.support.__getitem__)


@dataclass
class _Pair:
    request: int
    claim: int
    chunk: int
    length: int  # estimated tokens, for sorting


@dataclass
class RequestPlan:
    """One request cut for the model (tokenizer only): the texts scored as claims (a long claim's
    windows), the premises' chunks and what the model reads of each, with token counts. Every
    (chunk, window) pair is scored; `planned_by` is the planner's `plan_settings`, checked by the scorer."""

    claims: list[str]
    windows: list[str]
    window_owner: list[int]  # per window, the index of its claim
    window_tokens: list[int]
    chunks: list[Chunk]
    chunk_texts: list[str]
    chunk_tokens: list[int]
    planned_by: tuple


class ScorePlanner:
    """Cuts requests into claim windows and premise chunks: the tokenizer's, config's and profile's
    work, without the model (`from_pretrained` loads no weights)."""

    def __init__(self, config: Any, tokenizer: Any, *, labels: LabelScheme | None = None,
                 chunk_tokens: int = DEFAULT_CHUNK_TOKENS, max_length: int | None = None, name: str = "",
                 profile: "str | ScoringProfile | None" = None) -> None:
        if chunk_tokens < 16:
            raise ValueError(f"chunk_tokens must be at least 16, got {chunk_tokens}")
        self.tokenizer = tokenizer
        self.name = name or getattr(config, "_name_or_path", "") or config.model_type
        self.labels = labels or LabelScheme.from_config(config.id2label, self.name)
        self.chunk_tokens = chunk_tokens
        self.profile = profiles.resolve(profile, self.name)
        if self.profile.name == "minicheck" and config.model_type not in profiles.MINICHECK_MAX_LENGTH:
            raise ValueError(f"the minicheck profile reproduces MiniCheck's RoBERTa and DeBERTa checkpoints; "
                             f"{self.name!r} is a {config.model_type}")
        default_length = (profiles.MINICHECK_MAX_LENGTH[config.model_type] if self.profile.joined_input
                          else model_max_length(config, tokenizer))
        self.max_length = max_length or default_length
        #: MiniCheck's separator between chunk and claim, inside one sequence.
        self.eos_token = getattr(tokenizer, "eos_token", None) or tokenizer.sep_token
        self.special_tokens = tokenizer.num_special_tokens_to_add(pair=True)
        # Claims are capped so a chunk keeps at least half of the window.
        self.max_claim_tokens = max(8, (self.max_length - self.special_tokens) // 2)

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, *, labels: Sequence[str] | None = None,
                        profile: str | None = None, **kwargs: Any) -> "ScorePlanner":
        """The planner of a checkpoint (its tokenizer and config; no weights); unset arguments come
        from FI_EVALS_*, as for `NLIScorer.from_pretrained`."""
        from transformers import AutoConfig, AutoTokenizer

        name, weights, chosen, scheme_labels = _checkpoint(name_or_path, profile, labels)
        config = AutoConfig.from_pretrained(weights)
        scheme = LabelScheme.from_config(config.id2label, name, scheme_labels)
        return cls(config, AutoTokenizer.from_pretrained(weights), labels=scheme, name=name, profile=chosen,
                   **kwargs)

    @property
    def plan_settings(self) -> tuple:
        """What decides a plan: a scorer scores only plans made with its own."""
        return (self.name, self.profile.name, self.max_length, self.chunk_tokens)

    # -- chunking -------------------------------------------------------------------------------

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def claim_windows(self, claim: str, length: int) -> list[tuple[str, int]]:
        """The claim as (text, tokens) windows of at most `max_claim_tokens` tokens, cut between words
        where possible; a claim that fits is its only window."""
        if length <= self.max_claim_tokens:
            return [(claim, length)]
        return [(claim[start:end], tokens) for start, end, tokens in
                self._split_long(claim, 0, len(claim), self.max_claim_tokens)]

    def chunk(self, premises: Sequence[str], budget: int) -> list[Chunk]:
        """Cut each passage into chunks of at most `budget` tokens at sentence boundaries."""
        return [chunk for chunk, _, _ in self._chunk_with_lengths(premises, budget)]

    def _chunk_with_lengths(self, premises: Sequence[str], budget: int) -> list[tuple[Chunk, int, str]]:
        """(chunk, tokens, the text the model reads) per chunk: the default profile's packing, or the
        reference profile's chunking (budget unused there)."""
        if self.profile.name == "minicheck":
            return [item for index, passage in enumerate(premises) for item in self._minicheck_chunks(index, passage)]
        if self.profile.name == "alignscore":
            return [item for index, passage in enumerate(premises) for item in self._alignscore_chunks(index, passage)]
        chunks: list[tuple[Chunk, int, str]] = []
        for index, passage in enumerate(premises):
            sentences = split_sentences(passage)
            if not sentences:
                continue
            lengths = self.token_lengths([s.text for s in sentences])
            pieces: list[tuple[int, int, int]] = []  # (start, end, tokens) units no longer than budget
            for sentence, length in zip(sentences, lengths):
                if length <= budget:
                    pieces.append((sentence.start, sentence.end, length))
                else:
                    pieces.extend(self._split_long(passage, sentence.start, sentence.end, budget))
            chunks.extend((Chunk(passage[s:e], index, s, e), n, passage[s:e]) for s, e, n in _pack(pieces, budget))
        return chunks

    def _minicheck_chunks(self, index: int, passage: str) -> list[tuple[Chunk, int, str]]:
        """MiniCheck: the passage split at newlines, each line into sentences, a newline kept as an
        item between lines; items packed greedily while their token counts (each cut at the window)
        sum to at most 400; a chunk is its items joined by spaces, " \n " read as a newline, trimmed."""
        items: list[tuple[str, int, int]] = []  # (text, start, end)
        offset = 0
        for number, line in enumerate(passage.split("\n")):
            if number:
                items.append(("\n", offset - 1, offset - 1))
            items += [(s.text, offset + s.start, offset + s.end) for s in split_sentences(line)]
            offset += len(line) + 1
        if not items:
            items = [("", 0, 0)]
        counts = [len(ids) for ids in self.tokenizer([text for text, _, _ in items], add_special_tokens=False,
                                                       truncation=True, max_length=self.max_length)["input_ids"]]
        groups: list[list[int]] = []
        current: list[int] = []
        used = 0
        for i, count in enumerate(counts):
            if used + count > profiles.MINICHECK_CHUNK_TOKENS:
                groups.append(current)
                current, used = [i], count
            else:
                current.append(i)
                used += count
        groups.append(current)
        chunks = []
        for group in groups:
            text = " ".join(items[i][0] for i in group).replace(" \n ", "\n").strip()
            if text:
                spans = [items[i] for i in group if items[i][0] != "\n"] or [items[group[0]]]
                chunks.append((Chunk(passage[spans[0][1]:spans[-1][2]], index, spans[0][1], spans[-1][2]), text))
        return self._with_lengths(chunks)

    def _with_lengths(self, chunks: list[tuple[Chunk, str]]) -> list[tuple[Chunk, int, str]]:
        """(chunk, model text) pairs with the model text's tokens, counted in one tokenizer call."""
        lengths = self.token_lengths([text for _, text in chunks])
        return [(chunk, n, text) for (chunk, text), n in zip(chunks, lengths)]

    def _alignscore_chunks(self, index: int, passage: str) -> list[tuple[Chunk, int, str]]:
        """AlignScore (`nli_sp`): n = words // 350 + 1 parts; chunks of len(sentences) // n consecutive
        sentences (at least one) joined by spaces."""
        sentences = split_sentences(passage)
        if not sentences:
            return [(Chunk("", index, 0, 0), 0, "")]
        parts = len(passage.strip().split()) // profiles.ALIGNSCORE_CHUNK_WORDS + 1
        size = max(len(sentences) // parts, 1)
        chunks = []
        for first in range(0, len(sentences), size):
            group = sentences[first:first + size]
            start, end = group[0].start, group[-1].end
            chunks.append((Chunk(passage[start:end], index, start, end), " ".join(s.text for s in group)))
        return self._with_lengths(chunks)

    def _split_long(self, passage: str, start: int, end: int, budget: int) -> list[tuple[int, int, int]]:
        """A sentence longer than the budget becomes token windows cut between words where possible
        (a cut inside a word would re-tokenize differently and could overflow the budget)."""
        offsets = self.tokenizer(passage[start:end], add_special_tokens=False,
                                 return_offsets_mapping=True)["offset_mapping"]
        windows = []
        first = 0
        while first < len(offsets):
            last = min(first + budget, len(offsets))
            cut = last
            while cut < len(offsets) and cut > first + budget // 2 and offsets[cut][0] == offsets[cut - 1][1]:
                cut -= 1  # no whitespace between token cut-1 and cut: same word
            if cut < len(offsets) and offsets[cut][0] == offsets[cut - 1][1]:
                cut = last  # one word longer than half the budget: cut it anyway
            windows.append((start + offsets[first][0], start + offsets[cut - 1][1], cut - first))
            first = cut
        return windows

    def plan(self, requests: Sequence[ScoreRequest]) -> list[RequestPlan]:
        """Each request's claim windows (a reference profile keeps a claim whole) and premise chunks,
        cut to fit beside its longest window; the claims of all requests tokenized in one call."""
        all_lengths = iter(self.token_lengths([c for r in requests for c in r.claims]))
        reference = self.profile.name != "default"  # a reference profile scores claims whole
        plans = []
        for request in requests:
            windows = [(owner, window) for owner, claim in enumerate(request.claims)
                       for window in ([(claim, next(all_lengths))] if reference
                                      else self.claim_windows(claim, next(all_lengths)))]
            lengths = [tokens for _, (_, tokens) in windows]
            budget = self.max_length - self.special_tokens - max(lengths, default=0)
            sized = self._chunk_with_lengths(request.premises, max(8, min(self.chunk_tokens, budget)))
            plans.append(RequestPlan(list(request.claims), [text for _, (text, _) in windows],
                                     [owner for owner, _ in windows], lengths, [chunk for chunk, _, _ in sized],
                                     [text for _, _, text in sized], [n for _, n, _ in sized], self.plan_settings))
        return plans

class NLIScorer(ScorePlanner):
    """Scores claims against premises with a sequence-classification checkpoint (and plans, as its
    planner)."""

    def __init__(self, model: Any, tokenizer: Any, *, labels: LabelScheme | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 max_length: int | None = None, name: str = "",
                 profile: "str | ScoringProfile | None" = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        super().__init__(model.config, tokenizer, labels=labels, chunk_tokens=chunk_tokens, max_length=max_length,
                         name=name, profile=profile)
        self.model = model
        self.batch_size = batch_size
        # The packed, padding-free Triton encoder (fused/): chosen on CUDA for BERT/RoBERTa-family
        # checkpoints; FI_EVALS_ACCELERATION=off keeps the PyTorch path.
        from .fused import use_fused  # light: no torch/triton import

        self.fused = None
        if use_fused(model, self.device):
            from .fused import FusedEncoder

            self.fused = FusedEncoder(model)

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, *, device: str | None = None,
                        dtype: str | None = None, labels: Sequence[str] | None = None,
                        profile: str | None = None, **kwargs: Any) -> "NLIScorer":
        """Load a checkpoint by hub id or local path (or an AlignScore `.ckpt`, converted once and
        cached); unset arguments come from FI_EVALS_*."""
        # torch before transformers: inline evaluation loads this on a thread while the application
        # imports transformers; in this order the two threads' imports do not interleave (in the
        # other, `from transformers import pipeline` was seen to fail on a half-imported module)
        import torch  # noqa: F401
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .cpu_linear import pack_linears
        from .deberta_cpu import accelerate_for_cpu

        config = EvalsConfig.from_env()
        name, weights, chosen, scheme_labels = _checkpoint(name_or_path, profile, labels)
        target = resolve_device(parse_device(device or config.device))
        _check_device(target, "device" if device else "FI_EVALS_DEVICE")
        torch_dtype = resolve_dtype(dtype or config.dtype, target)
        tokenizer = AutoTokenizer.from_pretrained(weights)
        model = AutoModelForSequenceClassification.from_pretrained(weights, dtype=torch_dtype)
        model.eval().to(target)
        # On the CPU: DeBERTa-v2/v3's faster attention and oneDNN-packed linears, same maths
        # (FI_EVALS_ACCELERATION=off turns both off).
        model = pack_linears(accelerate_for_cpu(model))
        scheme = LabelScheme.from_config(model.config.id2label, name, scheme_labels)
        return cls(model, tokenizer, labels=scheme, name=name, profile=chosen, **kwargs)

    @property
    def device(self) -> "torch.device":
        return next(self.model.parameters()).device

    # -- scoring --------------------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest],
              on_progress: Callable[[int, int], None] | None = None) -> list[list[ClaimEvidence]]:
        """Evidence for every claim of every request: `score_plans(plan(requests))`."""
        return self.score_plans(self.plan(requests), on_progress)

    def score_plans(self, plans: Sequence[RequestPlan],
                    on_progress: Callable[[int, int], None] | None = None) -> list[list[ClaimEvidence]]:
        """Evidence for every claim of every plan; all pairs go through one sorted batch queue.
        `on_progress(done, total)` is called with the pairs scored so far after each model batch.
        A plan made with other settings (another checkpoint, profile, window or chunk size) is a
        ValueError naming both."""
        pairs: list[_Pair] = []
        for r_index, plan in enumerate(plans):
            if tuple(plan.planned_by) != self.plan_settings:
                raise ValueError(f"a plan made for {tuple(plan.planned_by)} (checkpoint, profile, window, chunk tokens) "
                                 f"cannot be scored by this scorer's {self.plan_settings}")
            for c_index, claim_len in enumerate(plan.window_tokens):
                for k_index, chunk_len in enumerate(plan.chunk_tokens):
                    pairs.append(_Pair(r_index, c_index, k_index, chunk_len + claim_len))

        def table() -> list[list[list[float]]]:
            return [[[0.0] * len(plan.chunks) for _ in plan.windows] for plan in plans]

        reference = self.profile.name != "default"
        three_way = self.labels.contradiction is not None
        support, contra = table(), table() if three_way else None
        cut = [[False] * len(plan.windows) for plan in plans]
        pairs.sort(key=lambda p: p.length)
        for first in range(0, len(pairs), self.batch_size):
            batch = pairs[first:first + self.batch_size]
            premises = [plans[p.request].chunk_texts[p.chunk] for p in batch]
            hypotheses = [plans[p.request].windows[p.claim] for p in batch]
            sup, con = self.score_pairs(premises, hypotheses)
            if reference:  # exact check, on the pairs whose estimated length comes near the window
                near = [i for i, p in enumerate(batch)
                        if p.length + self.special_tokens + OVERFLOW_MARGIN > self.max_length]
                if near:
                    over = self.overflows([premises[i] for i in near], [hypotheses[i] for i in near])
                    for i, cut_here in zip(near, over):
                        cut[batch[i].request][batch[i].claim] |= cut_here
            for i, p in enumerate(batch):
                support[p.request][p.claim][p.chunk] = sup[i]
                if contra is not None:
                    contra[p.request][p.claim][p.chunk] = con[i]
            if on_progress is not None:
                on_progress(first + len(batch), len(pairs))

        out: list[list[ClaimEvidence]] = []
        for r, plan in enumerate(plans):
            per_claim: list[list[int]] = [[] for _ in plan.claims]
            for w, owner in enumerate(plan.window_owner):
                per_claim[owner].append(w)
            evidence = []
            for claim, windows in zip(plan.claims, per_claim):
                weakest = min(windows, key=lambda w: max(support[r][w], default=0.0))
                evidence.append(ClaimEvidence(claim, plan.chunks, support[r][weakest],
                                              contra[r][weakest] if contra is not None else None, len(windows),
                                              any(cut[r][w] for w in windows)))
            out.append(evidence)
        return out

    def score_pairs(self, premises: Sequence[str], hypotheses: Sequence[str]
                    ) -> tuple[list[float], list[float] | None]:
        """Support (and contradiction) probabilities of one batch of pairs (padded, or packed on the
        fused path)."""
        import torch

        if self.profile.joined_input:  # MiniCheck: one sequence, cut at its end
            texts: tuple[list[str], ...] = ([f"{p}{self.eos_token}{h}" for p, h in zip(premises, hypotheses)],)
            truncation: str | bool = True
        else:
            texts, truncation = (list(premises), list(hypotheses)), "only_first"
        if self.fused is not None:  # packed: no padding
            enc = self.tokenizer(*texts, truncation=truncation, max_length=self.max_length)
            with torch.inference_mode():
                logits = self.fused(enc["input_ids"], token_type_ids=enc.get("token_type_ids"))
        else:
            enc = self.tokenizer(*texts, padding=True, truncation=truncation, max_length=self.max_length,
                                 return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                logits = self.model(**enc).logits
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        support = probs[:, self.labels.support].tolist()
        if self.labels.contradiction is None:
            return support, None
        return support, probs[:, self.labels.contradiction].tolist()

    def overflows(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[bool]:
        """Which pairs are longer than the window as this profile encodes them (and so are cut)."""
        if self.profile.joined_input:
            enc = self.tokenizer([f"{p}{self.eos_token}{h}" for p, h in zip(premises, hypotheses)])
        else:
            enc = self.tokenizer(list(premises), list(hypotheses))
        return [len(ids) > self.max_length for ids in enc["input_ids"]]


def _pack(pieces: list[tuple[int, int, int]], budget: int) -> list[tuple[int, int, int]]:
    """Greedy packing of consecutive pieces into windows of at most `budget` tokens.

    Each window after the first starts with the previous window's last piece when that still
    leaves room for a new one (one sentence of overlap); the windows together cover every piece.
    """
    windows: list[tuple[int, int, int]] = []
    i = 0
    while i < len(pieces):
        used, j = 0, i
        while j < len(pieces) and used + pieces[j][2] <= budget:
            used += pieces[j][2]
            j += 1
        if j == i:  # cannot happen (pieces are at most `budget`), but never loop forever
            j, used = i + 1, pieces[i][2]
        windows.append((pieces[i][0], pieces[j - 1][1], used))
        if j >= len(pieces):
            break
        overlap = j - 1 if j - 1 > i and pieces[j - 1][2] + pieces[j][2] <= budget else j
        i = overlap
    return windows


def model_max_length(config: Any, tokenizer: Any) -> int:
    """The longest input the checkpoint takes: its position table (less RoBERTa's offset) or tokenizer cap."""
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        if "roberta" in config.model_type or config.model_type in ("camembert", "xlm-roberta"):
            positions -= (config.pad_token_id or 0) + 1
        limits.append(positions)
    cap = getattr(tokenizer, "model_max_length", None)
    if cap and cap < 1_000_000:
        limits.append(cap)
    return min(limits) if limits else 512


def _checkpoint(name_or_path: str | None, profile: str | None, labels: Sequence[str] | None
                ) -> tuple[str, str, ScoringProfile, Sequence[str] | None]:
    """(name, the path its weights and tokenizer load from, profile, label names) of a checkpoint, unset
    arguments from FI_EVALS_*: an AlignScore `.ckpt` is converted once and cached."""
    config = EvalsConfig.from_env()
    name = name_or_path or config.model
    _check_local_path(name, "the NLI model" if name_or_path else "FI_EVALS_MODEL")
    chosen = profiles.resolve(profile or config.profile, name, "profile" if profile else "FI_EVALS_PROFILE")
    weights = name
    if Path(name).suffix.lower() == ".ckpt":  # AlignScore's Lightning checkpoint
        from .alignscore import converted_checkpoint

        weights = str(converted_checkpoint(name))
    return name, weights, chosen, labels if labels is not None else config.labels


def _check_local_path(name: str, what: str) -> None:
    """A name that can only be a local path (a hub id is `name` or `org/name`) must exist: said at
    once, not as the hub's "Repo id must be in the form" error (or a wait on the network)."""
    import os

    path = Path(name).expanduser()
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    if looks_local and not path.exists():
        raise FileNotFoundError(f"{what}: no model at {name} (a local path that does not exist)")


def _check_device(device: str, what: str) -> None:
    """A CUDA device that this machine does not have is a configuration error naming its source,
    not a torch assertion at the first batch."""
    if not device.startswith("cuda"):
        return
    import torch

    from ..telemetry.config import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError(what, device, "CUDA is not available here (this torch has no CUDA or sees no GPU); "
                                        "use cpu or auto")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(what, device, f"this machine has {torch.cuda.device_count()} CUDA device(s)")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> "torch.dtype":
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, dtype)


_shared: dict[tuple, NLIScorer] = {}
_planners: dict[tuple, ScorePlanner] = {}
_shared_lock = threading.Lock()


def shared_scorer(model: str | None = None, device: str | None = None, dtype: str | None = None,
                  labels: Sequence[str] | None = None, profile: str | None = None) -> NLIScorer:
    """One loaded scorer per (model, device, dtype, labels, profile) per process: evaluators share weights."""
    config = EvalsConfig.from_env()
    key = (model or config.model, device or config.device, dtype or config.dtype,
           tuple(labels) if labels else config.labels, profile or config.profile)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = NLIScorer.from_pretrained(key[0], device=key[1], dtype=key[2], labels=key[3],
                                                     profile=key[4])
        return _shared[key]


def shared_planner(model: str | None = None, labels: Sequence[str] | None = None,
                   profile: str | None = None) -> ScorePlanner:
    """One planner per (model, labels, profile) per process: the shared scorer of those settings when
    one is loaded here, else the checkpoint's tokenizer and config alone (no weights)."""
    config = EvalsConfig.from_env()
    key = (model or config.model, tuple(labels) if labels else config.labels, profile or config.profile)
    with _shared_lock:
        for (name, _, _, scheme, chosen), scorer in _shared.items():
            if (name, scheme, chosen) == key:
                return scorer
        if key not in _planners:
            _planners[key] = ScorePlanner.from_pretrained(key[0], labels=key[1], profile=key[2])
        return _planners[key]


def is_shared_scorer(scorer: Any) -> bool:
    """Whether `scorer` is one `shared_scorer` loaded from settings (which any process can load again),
    not an object the caller built."""
    with _shared_lock:
        return any(scorer is shared for shared in _shared.values())
