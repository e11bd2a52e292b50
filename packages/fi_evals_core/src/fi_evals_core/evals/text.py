"""Sentence and claim segmentation for the NLI evaluators, standard library only.

Why not nltk/spaCy: they need a runtime data download (punkt) or a model, and the evaluators must
run offline. Why not one big regex: abbreviations, initials and list layouts need look-behind and
look-ahead decisions that are clearer (and linear-time) as a small scanner.

The scanner works in two passes, both linear in the length of the text:

1. **Blocks** (line layout). A block is a run of lines that may hold one or more sentences; no
   sentence crosses a block boundary. A new block starts at
   - a blank line (it always ends a sentence);
   - a list item: a line starting with a bullet (``-``, ``*``, ``+``, ``–``, ``—`` followed by a
     space; ``•``, ``◦``, ``▪``, ``●``, ``■``, ``➤``, ``✓``, ... with or without one) or an
     enumerator (``1.``, ``1)``, ``(1)``, ``1.2.``, ``a)``, ``(a)``, ``iv)``, ``(iv)``) followed by
     a space. The marker is not part of any span. An item runs on over following *indented* lines
     that are not list items themselves; an unindented line ends it;
   - a Markdown heading line (``# Title``; the ``#`` marks are dropped), which is a block of its own;
   - the line after a *heading-like line*: the first line of a block, of at most 8 words and 60
     characters, not ending in terminal punctuation, a comma/semicolon/dash or a function word
     ("and", "the", "of", ...), when the next line starts with an upper-case letter, a digit or a
     letter of a script without case. Only a block's first line can be a heading, so hard-wrapped
     prose (whose first line is full width) is not cut by this rule.
   Any other single newline is whitespace inside the block, except that terminal punctuation at
   the end of a line ends its sentence whatever the next line starts with (see 2).

2. **Sentences** inside a block. A candidate is a run of terminal punctuation (``.``, ``?``, ``!``,
   ``…``, ``‽``, and those of other scripts) plus any closing quotes/brackets straight after it
   (``He said "stop." Then`` ends after the quote).
   - CJK full stops ``。！？｡``, the Devanagari danda ``। ॥``, Arabic/Urdu ``؟ ۔`` and Ethiopic
     ``። ፧`` always end a sentence: these scripts write no space after them.
   - Otherwise the candidate must be followed by whitespace or the end of the block, which keeps
     decimals and numbers (``3.14``, ``$1.5m``, ``2.5%``), URLs, e-mail addresses, ``U.K.-based``
     and ``Yahoo!Inc`` intact.
   - It is *not* a boundary when the next word starts with a lower-case letter on the same line
     (``"Why?" he asked``, ``bristol... we're``, unknown abbreviations like ``approx. two``) -
     unless an opening quote or bracket sits in between: a quotation that opens after terminal
     punctuation starts a new sentence even in lower-cased corpora such as XSum.
   - A single ``.`` is looked at with the word before it:
     * titles and mid-sentence abbreviations never end a sentence (``Mr.``, ``Dr.``, ``St.``,
       ``e.g.``, ``i.e.``, ``vs.``, ``cf.`` ... see ``_NON_FINAL``);
     * numbering abbreviations and months do not when a digit follows (``No. 10``, ``Fig. 3``,
       ``Jan. 5``); before anything else they are ordinary words, so ``The answer was no. Nobody
       asked.`` is two sentences (``He said no. 5 people came.`` is the case this gets wrong);
     * abbreviations that may end a sentence (``etc.``, ``Inc.``, ``Ltd.``, ``Jr.``, ``et al.``),
       dotted initialisms (``U.S.``, ``U.K.``, ``a.m.``) and single-letter initials (``J. K.
       Rowling``) end one only when the next word is a frequent sentence starter (``The``,
       ``He``, ``But``, ... see ``_STARTERS``) or, for ``etc.``, any capitalised word; at the
       end of a line they always do;
     * a number of one or two digits that opens the sentence or follows a colon (``1.`` and
       ``2.`` in ``Steps: 1. Mix. 2. Bake.``) is an inline enumerator and stays attached to what
       follows.
   - Nor is it one when the next character is one that cannot open a sentence: ``, ; :`` or a
     closing bracket/quote (``(in march! ), we'll``).
   - Ellipses, ``?`` and ``!`` end a sentence unless the lower-case rule above applies.

Spans are trimmed of surrounding whitespace; a span with no letter or digit (``---``, ``!!!``,
``* * *``) is dropped. ``TextSpan.text`` is exactly ``original[start:end]``, so newlines inside a
sentence are kept as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TextSpan", "has_words", "split_claims", "split_sentences"]


@dataclass(frozen=True, slots=True)
class TextSpan:
    """A piece of a text: ``text == original[start:end]`` (already stripped of whitespace)."""

    text: str
    start: int
    end: int


# --- character classes -------------------------------------------------------------------------

_UNSPACED_TERMINALS = "。！？｡।॥؟۔።፧"
_ALL_TERMINALS = ".?!…‽⁇⁈⁉" + _UNSPACED_TERMINALS
_CLOSERS = "\"'”’»›)]}」』】〕）〉》"
_OPENERS = "\"'“‘«‹([{¿¡「『【〔（〈《"
_TERMINAL_RE = re.compile(
    "([" + re.escape(_ALL_TERMINALS) + "]+)[" + re.escape(_CLOSERS) + "]*"
)
_NOT_OPENING = frozenset(",;:)]}”’»›」』】〕）〉》")  # cannot start a sentence
_WS_RE = re.compile(r"\s*")
_OPENERS_RE = re.compile("[" + re.escape(_OPENERS) + "]*")
_WORD_RE = re.compile(r"[^\W\d_]+")  # letters only: the word a starter check compares
_HAS_WORD_RE = re.compile(r"[^\W_]")  # any Unicode letter or digit
_INITIALISM_RE = re.compile(r"[^\W\d_](?:\.[^\W\d_])+")  # U.S, a.m, U.K (final dot excluded)
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_TOKEN_LOOKBACK = 64  # bounded so that one candidate costs O(1), whatever the text

# --- layout ------------------------------------------------------------------------------------

_LIST_MARKER_RE = re.compile(
    r"""[ \t]*(?:
        [•◦‣▪▫●○■□➢➤►▸▹✓✔☐☑][ \t]*             # unambiguous bullets, space optional
      | [-*+–—][ \t]+                           # ASCII/dash bullets need a space
      | \(?(?:\d{1,3}(?:\.\d{1,3})*[.)]         # 1.  1)  (1)  1.2.
          | (?:[A-Za-z]|[ivxIVX]{2,4})\))       # a)  (a)  iv)  (iv)
        [ \t]+
    )""",
    re.VERBOSE,
)
_HEADING_RE = re.compile(r"[ \t]{0,3}#{1,6}[ \t]+")
_HEADING_MAX_WORDS = 8
_HEADING_MAX_CHARS = 60
_CONTINUATION_ENDINGS = frozenset(",;-–—(/&+")
_FUNCTION_WORDS = frozenset(
    """a an the and or but nor of to in on at by for with from as that which who whom whose is are
    was were be been has have had its their his her our my your this these those than then into
    over under about via per if so""".split()
)

# --- abbreviations (lower-case, without the final period) --------------------------------------

#: Never end a sentence: titles before a name, and abbreviations used only mid-sentence.
_NON_FINAL = frozenset(
    """mr mrs ms messrs mmes mme mlle dr prof rev revd hon gen lt col capt cpt cmdr cdr adm maj brig
    sgt cpl pte sen rep gov pres supt insp det fr st mt e.g i.e cf vs viz approx ca esp incl excl
    dept univ assn est""".split()
)
#: Abbreviations only when a digit follows: numbering words and months.
_BEFORE_NUMBER = frozenset(
    """no nos nr fig figs vol vols pp p pg art arts sec ch chap pt pts para eq ref op tel ed ex
    jan feb mar apr jun jul aug sep sept oct nov dec""".split()
)
#: May end a sentence; do so only before a frequent sentence starter.
_MAY_END = frozenset("etc inc ltd co corp bros plc llc jr sr al esq ph.d ave blvd rd".split())
_STARTERS = frozenset(
    """The A An He She It They We I You This That These Those There Their His Her Its Our My Your
    But And However In On At As If When While After Before Since Then So Yet Also Meanwhile Some
    Many Most All What Why How Who Where Today Yesterday Now Still Although Though Despite For
    Other Another Each Both Such""".split()
)


def has_words(text: str) -> bool:
    """Whether ``text`` holds any Unicode letter or digit (punctuation and whitespace do not count)."""
    return _HAS_WORD_RE.search(text) is not None


def split_sentences(text: str) -> list[TextSpan]:
    """Split English prose (and CJK/Devanagari/other scripts on their terminal marks) into sentences.

    Returns spans in text order with character offsets into ``text``; see the module docstring for
    the rules. Empty or whitespace-only text, or text with no letter or digit, gives ``[]``; text
    with no terminal punctuation at all is one sentence per block.
    """
    spans: list[TextSpan] = []
    if not has_words(text):
        return spans
    for start, end in _blocks(text):
        _split_block(text, start, end, spans)
    return spans


_CLAIM_SPLIT_CHARS = 400
_CLAIM_MIN_PIECE = 40
_CLAUSE_RE = re.compile(r";\s+|,\s+(?:and|but)\s+")


def split_claims(text: str, *, min_chars: int = 3) -> list[TextSpan]:
    """The claims of a response, each checked on its own against the premise.

    A claim is a sentence of ``split_sentences(text)`` (bullet and list markers already removed)
    that holds a letter or digit and is at least ``min_chars`` characters long. A sentence longer
    than 400 characters - typically a run-on list of facts, which an NLI model would otherwise
    judge as one all-or-nothing hypothesis - is cut further at ``"; "``, ``", and "`` and
    ``", but "`` wherever both the piece before the cut (since the previous cut) and everything
    after it keep at least 40 characters; the separator itself (semicolon, comma and conjunction)
    belongs to neither piece. Offsets point into ``text``.
    """
    claims: list[TextSpan] = []
    for sentence in split_sentences(text):
        if len(sentence.text) < min_chars:
            continue
        if len(sentence.text) <= _CLAIM_SPLIT_CHARS:
            claims.append(sentence)
            continue
        piece_start = sentence.start
        for cut in _CLAUSE_RE.finditer(text, sentence.start, sentence.end):
            if cut.start() - piece_start >= _CLAIM_MIN_PIECE and sentence.end - cut.end() >= _CLAIM_MIN_PIECE:
                _emit(text, piece_start, cut.start(), claims)
                piece_start = cut.end()
        _emit(text, piece_start, sentence.end, claims)
    return claims


# --- pass 1: blocks ----------------------------------------------------------------------------


def _blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) ranges that no sentence crosses; list and heading markers are left outside."""
    blocks: list[tuple[int, int]] = []
    block_start = -1  # -1: no open block
    block_end = 0
    block_lines = 0
    block_is_item = False
    first_line = ""  # the open block's first line (for the heading rule), else ""

    def close() -> None:
        nonlocal block_start
        if block_start >= 0:
            blocks.append((block_start, block_end))
        block_start = -1

    pos = 0
    for line in text.splitlines(keepends=True):
        line_start = pos
        pos += len(line)
        content = line.rstrip("".join(_LINE_BREAKS))
        content_end = line_start + len(content)
        if not content.strip():
            close()
            continue
        marker = _LIST_MARKER_RE.match(content)
        if marker:
            close()
            block_start, block_end = line_start + marker.end(), content_end
            block_lines, block_is_item, first_line = 1, True, ""
            continue
        heading = _HEADING_RE.match(content)
        if heading:
            close()
            blocks.append((line_start + heading.end(), content_end))
            continue
        indented = content[0] in " \t"
        if block_start >= 0:
            if block_is_item:
                if indented:
                    block_end, block_lines = content_end, block_lines + 1
                    continue
            elif not (block_lines == 1 and _is_heading_like(first_line) and _starts_sentence(content)):
                block_end, block_lines = content_end, block_lines + 1
                continue
            close()
        block_start, block_end, block_lines, block_is_item = line_start, content_end, 1, False
        first_line = content
    close()
    return blocks


def _is_heading_like(line: str) -> bool:
    line = line.strip()
    if len(line) > _HEADING_MAX_CHARS or not line:
        return False
    words = line.split()
    if len(words) > _HEADING_MAX_WORDS:
        return False
    last = line.rstrip(_CLOSERS)[-1:]
    if not last or last in _CONTINUATION_ENDINGS or last in _ALL_TERMINALS:
        return False
    return words[-1].lower() not in _FUNCTION_WORDS


def _starts_sentence(line: str) -> bool:
    """Whether a line's first word could open a sentence: upper case, a digit, or a caseless script."""
    start = _OPENERS_RE.match(line, len(line) - len(line.lstrip())).end()
    if start >= len(line):
        return False
    c = line[start]
    return c.isupper() or c.isdigit() or (c.isalpha() and not c.islower())


# --- pass 2: sentences inside a block ----------------------------------------------------------


def _split_block(text: str, start: int, end: int, out: list[TextSpan]) -> None:
    sentence_start = start
    for candidate in _TERMINAL_RE.finditer(text, start, end):
        if _is_boundary(text, candidate, sentence_start, end):
            _emit(text, sentence_start, candidate.end(), out)
            sentence_start = candidate.end()
    _emit(text, sentence_start, end, out)


def _is_boundary(text: str, candidate: re.Match[str], sentence_start: int, end: int) -> bool:
    terminals = candidate.group(1)
    after = candidate.end()
    if any(ch in _UNSPACED_TERMINALS for ch in terminals):
        return True
    if after >= end:
        return True
    if not text[after].isspace():
        return False  # 3.14, example.com, U.K.-based, ?q=1
    word = _WS_RE.match(text, after, end).end()
    if word >= end:
        return True
    crossed_line = any(ch in _LINE_BREAKS for ch in text[after:word])
    first = _OPENERS_RE.match(text, word, end).end()
    if first >= end:
        return True
    opened = first > word
    c = text[first]
    if not opened and c in _NOT_OPENING:
        return False  # "(in march! ), we'll": the sentence goes on

    if terminals == ".":
        token_start, token = _token_before(text, candidate.start(), sentence_start)
        lower = token.lower()
        if lower in _NON_FINAL:
            return False
        if lower in _BEFORE_NUMBER and c.isdigit():
            return False
        if token.isdigit() and len(token) <= 2 and _is_enumerator(text, token_start, sentence_start):
            return False  # "2." in "Steps: 1. Mix. 2. Bake." numbers what follows
        if lower in _MAY_END or (len(token) == 1 and token.isalpha()) or _INITIALISM_RE.fullmatch(token):
            if crossed_line:
                return True
            if lower == "etc":
                return c.isupper()
            return _starts_with_starter(text, first, end)
    return not (c.islower() and not crossed_line and not opened)


def _starts_with_starter(text: str, start: int, end: int) -> bool:
    """Whether a frequent sentence starter begins at ``start`` (not an initial: "J. A. Smith")."""
    word = _WORD_RE.match(text, start, end)
    if word is None or word.group() not in _STARTERS:
        return False
    return len(word.group()) > 1 or text[word.end() : word.end() + 1] != "."


def _is_enumerator(text: str, token_start: int, sentence_start: int) -> bool:
    """Whether a number opens its sentence or follows a colon (an inline list's enumerator)."""
    i = token_start
    while i > sentence_start and text[i - 1].isspace() and token_start - i < _TOKEN_LOOKBACK:
        i -= 1
    return i == sentence_start or text[i - 1] == ":"


def _token_before(text: str, period: int, floor: int) -> tuple[int, str]:
    """The word that a period ends, without surrounding quotes/brackets, and where it starts."""
    i = period
    limit = max(floor, period - _TOKEN_LOOKBACK)
    while i > limit and not text[i - 1].isspace():
        i -= 1
    token = text[i:period]
    stripped = token.lstrip(_OPENERS)
    return i + len(token) - len(stripped), stripped.rstrip(_CLOSERS)


def _emit(text: str, start: int, end: int, out: list[TextSpan]) -> None:
    """Append text[start:end] trimmed of whitespace, unless it has no letter or digit."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end and _HAS_WORD_RE.search(text, start, end):
        out.append(TextSpan(text[start:end], start, end))
