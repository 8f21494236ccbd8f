"""What the prompt classifier reads: the normalised text, and the character n-gram features of its cheap first stage.

Normalisation undoes the usual disguises of an injection before either
stage reads it. NFKC folds fullwidth and mathematical letters ("𝐢𝐠𝐧𝐨𝐫𝐞")
into plain ones. Format characters (zero-width spaces and joiners, Unicode
tag characters) are dropped. Cyrillic and Greek letters that look like
Latin ones become those Latin letters. Training and scanning both normalise,
so the classifier catches these tricks even where no InvisibleText scanner
runs before it.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.feature_extraction.text import HashingVectorizer

# Cyrillic and Greek letters that render like a Latin letter in common fonts,
# from Unicode's confusables list (confusables.txt, Unicode 15.1).
_HOMOGLYPHS = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h",
        "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
        "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ү": "Y",
        "α": "a", "ο": "o", "ρ": "p", "ν": "v", "κ": "k", "ι": "i", "τ": "t", "υ": "u",
        "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
        "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    }
)  # fmt: skip

# First-stage features: character 3- to 5-grams inside word boundaries,
# hashed into 2**16 columns. That keeps the stored weights at 256 KB (float32)
# with few collisions for about 1,200 training prompts.
SCREEN_FEATURES = 2**16
SCREEN_NGRAM_RANGE = (3, 5)
# The first stage reads a long prompt in windows of this many characters
# (about the length of one encoder window), overlapping by about a quarter,
# and the most suspicious window counts.
SCREEN_WINDOW_CHARS = 500
SCREEN_WINDOW_OVERLAP_CHARS = 120
# A sentence ends at ".", "!" or "?" before whitespace, or at a line break.
# Shorter pieces ("Hi.", "1.") carry too little text for a verdict.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
MIN_SENTENCE_CHARS = 20


def normalize_prompt(text: str) -> str:
    """Return `text` with NFKC applied, format characters dropped and Latin lookalikes replaced by Latin letters."""
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(char for char in folded if unicodedata.category(char) != "Cf")
    return visible.translate(_HOMOGLYPHS)


def screen_windows(text: str) -> list[str]:
    """Split `text` into overlapping windows of `SCREEN_WINDOW_CHARS` that cover every character; at least one."""
    stride = SCREEN_WINDOW_CHARS - SCREEN_WINDOW_OVERLAP_CHARS
    last_start = max(len(text) - SCREEN_WINDOW_CHARS, 0)
    starts = list(range(0, last_start + 1, stride))
    if starts[-1] != last_start:
        starts.append(last_start)
    return [text[start : start + SCREEN_WINDOW_CHARS] for start in starts]


def screen_chunks(text: str) -> list[str]:
    """Return the windows of `text` and, when it has more than one, its sentences: what the scanner's screen scores.

    A one-sentence injection after a long benign text is outweighed by the
    benign text in its window, but scores high as a sentence of its own.
    """
    sentences = [sentence for sentence in _SENTENCE_END.split(text) if len(sentence.strip()) >= MIN_SENTENCE_CHARS]
    if len(sentences) <= 1:
        return screen_windows(text)
    return screen_windows(text) + sentences


def screen_vectorizer() -> HashingVectorizer:
    """Return the first stage's feature hashing; it is stateless, so training and scanning build it alike."""
    return HashingVectorizer(
        analyzer="char_wb",
        ngram_range=SCREEN_NGRAM_RANGE,
        n_features=SCREEN_FEATURES,
        alternate_sign=False,
        lowercase=True,
        norm="l2",
    )


def screen_features(vectorizer: HashingVectorizer, windows: list[str]) -> csr_matrix:
    """Return the hashed n-gram rows of `windows`, one per window, as float32."""
    return vectorizer.transform(windows).astype(np.float32)
