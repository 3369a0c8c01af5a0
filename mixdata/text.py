"""Text repair, normalisation and quality measures: pure functions on one string.

`clean_text` is applied to every text part a source yields. The measures feed the recipe's
`filters:` (see `mixdata.sources.filtering`); each returns a number and never raises.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter

import ftfy

# Repair mojibake, HTML entities, control characters and broken line endings, but keep the
# writer's style: uncurling quotes would rewrite valid typography, and the width fix would
# turn CJK full-width punctuation (，（）) into ASCII in Chinese corpora such as OmniCorpus.
_FTFY = ftfy.TextFixerConfig(uncurl_quotes=False, fix_character_width=False,
                             normalization="NFC")
_INLINE_SPACE = re.compile(r"[^\S\n]+")   # any whitespace except the newline
_BLANK_LINES = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+(?:['’]\w+)*")

CHAR_NGRAM = 10
WORD_NGRAM = 3

# Common English function words (used only as a "does this read like prose" signal).
STOP_WORDS = frozenset([
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
    "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by",
    "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from",
    "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him",
    "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me",
    "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only",
    "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so",
    "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there",
    "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was",
    "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with",
    "would", "you", "your", "yours", "yourself", "yourselves"
])


def clean_text(text: str) -> str:
    """Repair with ftfy, normalise to NFC and tidy whitespace.

    Inline whitespace runs (tabs, no-break and ideographic spaces included) become one space,
    lines lose their edge spaces, at most one blank line separates paragraphs, and the result
    has no leading or trailing whitespace.
    """
    # Tidying can change what ftfy sees ('\xa0À\x86' -> 'À†', itself mojibake of 'ˠ'), so
    # a text that changed is cleaned again until it is stable: the output is a fixed point.
    for _ in range(_MAX_PASSES):
        cleaned = _clean_once(text)
        if cleaned == text:
            break
        text = cleaned
    return text


_MAX_PASSES = 4


def _clean_once(text: str) -> str:
    fixed = unicodedata.normalize("NFC", ftfy.fix_text(text, _FTFY))
    lines = (_INLINE_SPACE.sub(" ", line).strip() for line in fixed.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def words(text: str) -> list[str]:
    """Word tokens: runs of letters/digits, with inner apostrophes kept (don't, l'eau)."""
    return _WORD.findall(text)


def word_count(text: str) -> int:
    return len(words(text))


def _repeated_coverage(grams: list, n: int, total: int) -> float:
    """Share of `total` items covered by at least one of the n-grams (`grams[i]` starts at
    item i) that occurs more than once."""
    if not grams:
        return 0.0
    counts = Counter(grams)
    covered_until, covered = 0, 0
    for start, gram in enumerate(grams):
        if counts[gram] > 1:
            end = start + n
            covered += end - max(start, covered_until)
            covered_until = end
    return covered / total


def char_repetition(text: str, n: int = CHAR_NGRAM) -> float:
    """Share of characters inside a character n-gram that appears at least twice (0..1)."""
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return _repeated_coverage(grams, n, len(text))


def word_repetition(text: str, n: int = WORD_NGRAM) -> float:
    """Share of words inside a word n-gram (case-folded) that appears at least twice (0..1)."""
    tokens = [w.casefold() for w in words(text)]
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return _repeated_coverage(grams, n, len(tokens))


def special_char_ratio(text: str) -> float:
    """Share of non-whitespace characters that are neither letters nor digits (0..1)."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return 0.0
    return sum(not c.isalnum() for c in visible) / len(visible)


def stopword_ratio(text: str) -> float:
    """Share of words that are common English stop words (0..1); 0 for text without words."""
    tokens = words(text)
    if not tokens:
        return 0.0
    return sum(w.casefold() in STOP_WORDS for w in tokens) / len(tokens)


def dedup_text(text: str) -> str:
    """The form exact dedup hashes: cleaned, whitespace-collapsed and case-folded."""
    return " ".join(clean_text(text).split()).casefold()
