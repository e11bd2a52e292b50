"""Scoring profiles: how a checkpoint's published inference turns (document, response) into a score.

A fact-checking checkpoint's published accuracy holds only for the way its authors fed it: how the
response is cut into claims, how the document is cut into chunks, how a pair is encoded, how
chunk scores add up and where the pass line is. A profile names one such recipe; the scorer and
the evaluators follow the one chosen for the checkpoint.

| profile | claims | chunks of the premise | one model input | per claim | passes |
| --- | --- | --- | --- | --- | --- |
| `default` | sentences (`split_claims`); a claim longer than half the window in windows, scored as its weakest | sentences packed to <= 400 tokens *and* the window less the longest claim, one sentence of overlap | the tokenizer's pair encoding | best chunk's support; contradiction veto from that chunk | score >= threshold |
| `minicheck` | the response whole, one claim (MiniCheck, Tang et al. 2024) | per line, sentences packed greedily to <= 400 tokens (the claim not counted), no overlap, joined by spaces | `chunk + eos_token + claim` as one sequence, cut at the end to 512 tokens (RoBERTa) or 2,048 (DeBERTa) | max over chunks of P(supported) | score > threshold (0.5) |
| `alignscore` | sentences (`split_sentences`) (AlignScore, Zha et al. 2023, `nli_sp`) | n = words // 350 + 1 chunks of len(sentences) // n consecutive sentences, joined by spaces | the pair encoding, the chunk cut to fit 512 tokens | max over chunks of P(aligned) of the 3-way head; the score is the mean over claims | score >= threshold |

What the reference code cuts silently (MiniCheck the end of a long claim, AlignScore the end of a
long chunk) these profiles cut the same way, to reproduce the published numbers, and say so: the
claim's `truncated` flag is set and the reason names it. Sentence boundaries come from this
project's splitter (`text.py`) where the references use NLTK's punkt; the two agree on ordinary
prose and can differ on rare abbreviations.

`auto` (the default, `FI_EVALS_PROFILE`) picks `minicheck` for a checkpoint whose name or path says
MiniCheck, `alignscore` for an AlignScore Lightning checkpoint (`.ckpt`), else `default`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .text import split_claims, split_sentences

PROFILE_NAMES = ("auto", "default", "minicheck", "alignscore")
MINICHECK_CHUNK_TOKENS = 400
#: MiniCheck's max_model_len: its RoBERTa is cut at 512 tokens, its DeBERTa-v3 (relative
#: positions) at 2,048.
MINICHECK_MAX_LENGTH = {"roberta": 512, "deberta-v2": 2048}
ALIGNSCORE_CHUNK_WORDS = 350


@dataclass(frozen=True)
class ScoringProfile:
    """One recipe; see the module docstring's table."""

    name: str
    whole_claims: bool = False  # the response is one claim (MiniCheck)
    sentence_claims: bool = False  # claims are plain sentences (AlignScore); else split_claims
    joined_input: bool = False  # chunk + eos + claim as one sequence (MiniCheck)
    strict_pass: bool = False  # passes when score > threshold (MiniCheck's `> 0.5`)
    veto: bool = True  # a claim contradicted by its best chunk fails the row

    def claims(self, text: str) -> list[str]:
        """The claims a response is checked as."""
        if self.whole_claims:
            return [text]
        spans = split_sentences(text) if self.sentence_claims else split_claims(text)
        return [span.text for span in spans] or [text.strip()]

    def passes(self, score: float, threshold: float) -> bool:
        return score > threshold if self.strict_pass else score >= threshold


DEFAULT = ScoringProfile("default")
MINICHECK = ScoringProfile("minicheck", whole_claims=True, joined_input=True, strict_pass=True, veto=False)
ALIGNSCORE = ScoringProfile("alignscore", sentence_claims=True, veto=False)
PROFILES = {p.name: p for p in (DEFAULT, MINICHECK, ALIGNSCORE)}


def detect(name: str) -> ScoringProfile:
    """The profile a checkpoint name or path implies (`auto`)."""
    if Path(name).suffix.lower() == ".ckpt":
        return ALIGNSCORE
    if "minicheck" in name.lower():
        return MINICHECK
    return DEFAULT


def resolve(profile: "str | ScoringProfile | None", name: str, what: str = "profile") -> ScoringProfile:
    """A profile by name (`auto`/None: detected from `name`); an unknown name is a ValueError."""
    if isinstance(profile, ScoringProfile):
        return profile
    if profile in (None, "", "auto"):
        return detect(name)
    if profile not in PROFILES:
        raise ValueError(f"{what} {profile!r} is not a scoring profile: choose from {', '.join(PROFILE_NAMES)}")
    return PROFILES[profile]
