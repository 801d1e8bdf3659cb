"""A weight-free text encoder for tests and debug models: hashed word vectors plus positions.

Each lower-cased word token is mapped to a fixed pseudo-random vector derived from BLAKE2b of
``(seed, token)`` — never Python's salted ``hash`` — so the same prompt gives the same states in
every process, on every platform, with no RNG state involved. Bracketed tags such as
``[SHOT CUT]`` stay one token (``"[shot cut]"``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re

import numpy as np
import torch

from storyreel.text.base import TextEncoder

__all__ = ["HashingEncoder", "tokenize_words"]

_TAG = re.compile(r"\[[^\[\]]*\]")  # a bracketed tag, e.g. "[SHOT CUT]"
_WORD = re.compile(r"[^\W_]+")  # a run of letters/digits (any script), underscores split
_TOKEN = re.compile(rf"{_TAG.pattern}|{_WORD.pattern}")
EMPTY_TOKEN = "[empty]"


def tokenize_words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text``; a ``[...]`` tag is one token with inner words joined by one space.

    >>> tokenize_words("[SHOT CUT] Close-up of Character 1.")
    ['[shot cut]', 'close', 'up', 'of', 'character', '1']
    """
    out = []
    for match in _TOKEN.finditer(text.lower()):
        tok = match.group(0)
        if tok.startswith("["):
            inner = " ".join(_WORD.findall(tok))
            if not inner:
                continue  # "[]" or "[--]" carries no word
            tok = f"[{inner}]"
        out.append(tok)
    return out


@functools.lru_cache(maxsize=65536)
def _token_vector(token: str, seed: int, dim: int) -> np.ndarray:
    """``[dim]`` float64 standard-normal vector / sqrt(dim) (norm ≈ 1), a pure function of (token, seed, dim)."""
    n_words = 2 * dim  # one (u1, u2) pair of uint32 per normal
    raw = bytearray()
    block = 0
    while len(raw) < 4 * n_words:
        raw += hashlib.blake2b(f"{seed}\x1f{token}\x1f{block}".encode(), digest_size=64).digest()
        block += 1
    words = np.frombuffer(bytes(raw[: 4 * n_words]), dtype="<u4").astype(np.float64)
    u = (words + 0.5) / 2.0**32  # uniform in (0, 1), never 0 or 1
    u1, u2 = u[:dim], u[dim:]
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)  # Box–Muller
    return normal / math.sqrt(dim)


def _positions(length: int, dim: int, scale: float) -> torch.Tensor:
    """``[length, dim]`` sinusoidal position code with L2 norm ``scale`` per row (for dim ≥ 2)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # [L, 1]
    j = torch.arange(dim, dtype=torch.float64)[None, :]  # [1, D]
    angle = pos * torch.pow(10000.0, -(torch.div(j, 2, rounding_mode="floor") * 2) / dim)  # [L, D]
    code = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return (code * (scale / code.norm(dim=1, keepdim=True).clamp_min(1e-12))).float()


class HashingEncoder(TextEncoder):
    """Deterministic bag-of-words-with-positions encoder (no weights).

    ``encode``: state of token ``l`` = hashed word vector (norm ≈ 1) + sinusoidal position code
    (norm ``position_scale``); an empty prompt encodes as the single token ``"[empty]"`` so every
    prompt has at least one real token. ``embed``: L2-normalised mean of the word vectors, so
    prompts sharing words have a higher cosine similarity.
    """

    name = "hashing"

    def __init__(
        self,
        dim: int = 64,
        max_length: int = 32,
        seed: int = 0,
        *,
        position_scale: float = 0.5,
        device: str | torch.device = "cpu",
        cache_size: int = 512,
    ) -> None:
        super().__init__(cache_size=cache_size)
        if not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an int >= 2, got {dim!r}")
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if not position_scale >= 0:
            raise ValueError(f"position_scale must be >= 0, got {position_scale!r}")
        self.dim = dim
        self.max_length = max_length
        self.seed = seed
        self.position_scale = float(position_scale)
        self._device = torch.device(device)
        self._pos = _positions(max_length, dim, self.position_scale)  # [L, D]

    @property
    def device(self) -> torch.device:
        return self._device

    def tokens(self, prompt: str) -> list[str]:
        """The tokens ``encode`` uses for ``prompt`` (truncated to ``max_length``)."""
        return (tokenize_words(prompt) or [EMPTY_TOKEN])[: self.max_length]

    def _word_vectors(self, tokens: list[str]) -> torch.Tensor:
        """``[n, D]`` hashed vectors of ``tokens``."""
        return torch.from_numpy(np.stack([_token_vector(t, self.seed, self.dim) for t in tokens])).float()

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        states = torch.zeros(len(prompts), self.max_length, self.dim)  # [N, L, D]
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)  # [N, L]
        for i, prompt in enumerate(prompts):
            vecs = self._word_vectors(self.tokens(prompt))  # [n, D]
            n = vecs.shape[0]
            states[i, :n] = vecs + self._pos[:n]
            mask[i, :n] = True
        return states.to(self._device), mask.to(self._device)

    def _embed_batch(self, prompts: list[str]) -> torch.Tensor:
        # the sentence embedding sees every word, not only the first max_length
        means = [self._word_vectors(tokenize_words(p) or [EMPTY_TOKEN]).mean(dim=0) for p in prompts]  # N × [D]
        return torch.nn.functional.normalize(torch.stack(means), dim=-1).to(self._device)  # [N, D]

    def __repr__(self) -> str:
        return f"HashingEncoder(dim={self.dim}, max_length={self.max_length}, seed={self.seed})"
