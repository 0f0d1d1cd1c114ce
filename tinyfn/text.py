"""Text for sequence models: a character tokenizer, and sampling text from a language model.

A character-level language model reads ids ``(B, T)`` and returns logits ``(B, T, V)``: row
``t`` scores each of the ``V`` characters as the one that follows position ``t``. To write
text with it, :func:`generate` feeds it the text so far, draws the next character from the
softmax of the last row, appends it and repeats.

>>> from tinyfn.text import CharTokenizer
>>> tokenizer = CharTokenizer.from_text("to be, or not to be")
>>> tokenizer.vocabulary                 # the distinct characters, sorted: id i is character i
' ,benort'
>>> ids = tokenizer.encode("to be")
>>> ids.tolist()
[7, 5, 0, 2, 3]
>>> tokenizer.decode(ids)
'to be'
"""

from __future__ import annotations

import numpy as np

from . import random
from .random import _check_int, _check_real

__all__ = ["CharTokenizer", "generate"]


class CharTokenizer:
    """Characters to integer ids and back: id ``i`` is character ``vocabulary[i]``.

    Build it from a text (:meth:`from_text`: its distinct characters, sorted) or from a saved
    vocabulary string, which is how a trained model gets its tokenizer back. Encoding a
    character that is not in the vocabulary raises ValueError naming it.
    """

    def __init__(self, vocabulary: str):
        if not isinstance(vocabulary, str):
            raise TypeError(f"CharTokenizer: expected a string of characters, found {type(vocabulary).__name__}")
        if not vocabulary:
            raise ValueError("CharTokenizer: expected a non-empty string of characters, found ''")
        repeated = sorted({c for c in vocabulary if vocabulary.count(c) > 1})
        if repeated:
            raise ValueError(f"CharTokenizer: expected each character of the vocabulary once, found {repeated} "
                             "more than once")
        self.vocabulary = vocabulary
        self._codes = np.array([ord(c) for c in vocabulary], dtype=np.uint32)  # id -> code point
        self._order = np.argsort(self._codes)  # code points sorted, for a binary search in encode

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The tokenizer whose vocabulary is the distinct characters of ``text``, sorted."""
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer.from_text: expected a str, found {type(text).__name__}")
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        """The number of characters (and ids)."""
        return len(self.vocabulary)

    def encode(self, text: str) -> np.ndarray:
        """The ids of the characters of ``text``: an int64 array of shape ``(len(text),)``.

        Raises ValueError naming the characters that are not in the vocabulary (and where the
        first one is).
        """
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer.encode: expected a str, found {type(text).__name__}")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        sorted_codes = self._codes[self._order]
        found = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
        unknown = sorted_codes[found] != codes
        if unknown.any():
            first = int(np.argmax(unknown))
            characters = "".join(sorted({text[i] for i in np.flatnonzero(unknown)}))
            raise ValueError(
                f"CharTokenizer.encode: expected characters of the vocabulary {self.vocabulary!r}, found "
                f"{characters!r} (first at index {first})"
            )
        return self._order[found].astype(np.int64)

    def decode(self, ids) -> str:
        """The text of ``ids`` (a 1-D array or sequence of ints in ``[0, vocab_size)``)."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise TypeError(f"CharTokenizer.decode: expected a 1-D sequence of integer ids, found {ids.dtype} array "
                            f"of shape {ids.shape}")
        outside = (ids < 0) | (ids >= self.vocab_size)
        if outside.any():
            raise ValueError(f"CharTokenizer.decode: expected ids in [0, {self.vocab_size}), found "
                             f"{ids[outside][:10].tolist()}")
        return self._codes[ids.astype(np.intp)].tobytes().decode("utf-32-le")

    def __repr__(self):
        return f"CharTokenizer({self.vocabulary!r})"


def generate(logits_fn, prompt_ids, num_tokens: int, key, *, temperature: float = 1.0, context: int | None = None):
    """Continue ``prompt_ids`` with ``num_tokens`` ids drawn one at a time from a language model.

    ``logits_fn(ids) -> logits``: ids ``(1, t)`` to logits ``(1, t, V)`` (a model's apply with
    its params). Each new id is drawn from ``softmax(logits[0, -1] / temperature)`` given the
    last ``context`` ids so far (all of them when ``context`` is None), with the key
    ``random.fold_in(key, i)`` for the ``i``-th new id: the same key gives the same text.
    A temperature below 1 sharpens the distribution (more common characters), above 1
    flattens it. ``prompt_ids`` is a non-empty 1-D sequence of ints. Returns the new ids, an
    int64 array of shape ``(num_tokens,)``.
    """
    ids = np.asarray(prompt_ids, dtype=np.int64).reshape(-1).tolist()
    if not ids:
        raise ValueError("generate: expected at least one prompt id to start from, found none")
    num_tokens = _check_int("generate: num_tokens", num_tokens)
    temperature = _check_real("generate: temperature", temperature, 0.0, open_low=True)
    window = len(ids) + num_tokens if context is None else _check_int("generate: context", context, 1)
    for i in range(num_tokens):
        logits = np.asarray(logits_fn(np.array([ids[-window:]], dtype=np.int64)), dtype=np.float64)[0, -1]
        scaled = (logits - logits.max()) / temperature
        p = np.exp(scaled)
        ids.append(int(random.choice(random.fold_in(key, i), len(p), 1, p=p / p.sum())[0]))
    return np.array(ids[len(ids) - num_tokens :], dtype=np.int64)
