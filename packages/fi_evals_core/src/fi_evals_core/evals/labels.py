"""What a sequence-classification checkpoint's outputs mean, read from its `id2label`.

NLI checkpoints list their three classes in no agreed order (cross-encoder's are contradiction /
entailment / neutral, MoritzLaurer's entailment / neutral / contradiction); fact-checking
checkpoints such as MiniCheck have two (unsupported / supported). The scorer needs to know which
output is "the premise supports the claim" and, where there is one, which is "contradicts". A
checkpoint whose labels do not say is an error naming them, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

SUPPORT = frozenset({"entailment", "entail", "entails", "entailed", "supported", "support", "supports",
                     "consistent", "factual", "yes", "true"})
CONTRADICTION = frozenset({"contradiction", "contradict", "contradicts", "contradicted", "refuted",
                           "refutes", "refute"})
NEUTRAL = frozenset({"neutral", "not_enough_info", "nei", "not_enough_information"})
UNSUPPORTED = frozenset({"unsupported", "not_supported", "not_entailment", "non_entailment",
                         "not_entailed", "no", "false", "inconsistent", "not_factual"})
# Checkpoints known to ship generic LABEL_0/LABEL_1 names, with their documented meaning.
KNOWN_GENERIC = {"minicheck": ("unsupported", "supported")}


class LabelError(ValueError):
    """The checkpoint's labels cannot be read as NLI or fact-checking classes."""


def _normalise(label: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(label).strip().lower())


@dataclass(frozen=True)
class LabelScheme:
    """Indices of the checkpoint's outputs: `support` always, `contradiction` when it has one."""

    names: tuple[str, ...]
    support: int
    contradiction: int | None

    @property
    def three_way(self) -> bool:
        return len(self.names) == 3

    @classmethod
    def from_names(cls, names: Sequence[str], source: str = "labels") -> "LabelScheme":
        kinds = []
        for name in names:
            norm = _normalise(name)
            kind = next((k for k, words in (("support", SUPPORT), ("contradiction", CONTRADICTION),
                                            ("neutral", NEUTRAL), ("unsupported", UNSUPPORTED))
                         if norm in words), None)
            kinds.append(kind)
        described = ", ".join(f"{i}: {n!r}" for i, n in enumerate(names))
        hint = ("; name them with the `labels` argument or FI_EVALS_LABELS, in output order "
                "(e.g. 'contradiction,entailment,neutral' or 'unsupported,supported')")
        if len(names) == 3 and sorted(map(str, kinds)) == ["contradiction", "neutral", "support"]:
            return cls(tuple(names), kinds.index("support"), kinds.index("contradiction"))
        if len(names) == 2 and "support" in kinds:
            other = kinds[1 - kinds.index("support")]
            if other in ("unsupported", "contradiction"):
                contradiction = kinds.index("contradiction") if other == "contradiction" else None
                return cls(tuple(names), kinds.index("support"), contradiction)
        raise LabelError(
            f"cannot interpret the {source} ({described}) as 3-way NLI classes "
            f"(entailment, neutral, contradiction) or 2-way fact-checking classes "
            f"(supported, unsupported){hint}"
        )

    @classmethod
    def from_config(cls, id2label: Mapping[int, str] | None, model_name: str = "",
                    override: Sequence[str] | None = None) -> "LabelScheme":
        """Read the scheme from `override` if given, else the checkpoint's `id2label`."""
        if override is not None:
            scheme = cls.from_names(list(override), "labels given")
            if id2label and len(id2label) != len(scheme.names):
                raise LabelError(f"{len(scheme.names)} labels given but the checkpoint has "
                                 f"{len(id2label)} outputs")
            return scheme
        if not id2label:
            raise LabelError(f"checkpoint {model_name!r} has no id2label in its config")
        names = [id2label[i] for i in sorted(int(k) for k in id2label)]
        generic = all(re.fullmatch(r"label_\d+", _normalise(n)) for n in names)
        if generic:
            for marker, known in KNOWN_GENERIC.items():
                if marker in model_name.lower() and len(known) == len(names):
                    return cls.from_names(known, f"documented labels of {model_name!r}")
        return cls.from_names(names, f"id2label of {model_name!r}" if model_name else "id2label")
