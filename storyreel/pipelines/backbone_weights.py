"""Backbone weights folders: what a Wan / CogVideoX diffusers folder must hold, a check that lists what is missing
before anything is loaded, a cheap fingerprint of multi-GB weights, and tiny random folders for tests.

The layout is the diffusers repository layout: ``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from storyreel.pipelines.scene import GenerationError
from storyreel.utils import atomic_write

__all__ = [
    "BACKBONES",
    "BackboneFolderError",
    "check_weights_dir",
    "expected_weights",
    "weights_fingerprint",
    "write_debug_weights",
]

BACKBONES = ("wan", "cogvideox")
_PIPELINE_CLASS = {"wan": "WanPipeline", "cogvideox": "CogVideoXPipeline"}
_TRANSFORMER_CLASS = {"wan": "WanTransformer3DModel", "cogvideox": "CogVideoXTransformer3DModel"}
_VAE_CLASS = {"wan": "AutoencoderKLWan", "cogvideox": "AutoencoderKLCogVideoX"}
# pixel frames per shot: Wan's VAE encodes 1 + 4k frames; CogVideoX's encodes/decodes 1 + 8k frames exactly
_FRAME_STEP = {"wan": 4, "cogvideox": 8}
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                      "diffusion_pytorch_model.bin")
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class BackboneFolderError(GenerationError):
    """A backbone weights folder is missing, incomplete or of another backbone; the message lists the files."""


# ------------------------------------------------------------------------------------------------ weights folder


def expected_weights(kind: str) -> list[str]:
    """The files a ``kind`` weights folder must hold (one line per requirement, alternatives joined by ``|``)."""
    _check_kind(kind)
    weights = " | ".join(_DIFFUSERS_WEIGHTS)
    return [
        "model_index.json",
        "transformer/config.json", f"transformer/{{{weights}}}",
        "vae/config.json", f"vae/{{{weights}}}",
        "text_encoder/config.json", f"text_encoder/{{{' | '.join(_HF_WEIGHTS)}}}",
        "tokenizer/tokenizer_config.json", "tokenizer/{tokenizer.json | spiece.model}",
        "scheduler/scheduler_config.json",
    ]


def _check_kind(kind: str) -> None:
    if kind not in BACKBONES:
        raise GenerationError(f"backbone {kind!r} is unknown; choose one of {', '.join(BACKBONES)} (--backbone)")


def _weight_files(folder: Path, names: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """(files present, files missing) for one component's weights; a sharded index must name shards that exist."""
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path], []
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as err:
            return [], [f"{folder.name}/{name} (unreadable: {err})"]
        missing = [f"{folder.name}/{s}" for s in shards if not (folder / s).is_file()]
        return [path, *(folder / s for s in shards if (folder / s).is_file())], missing
    return [], [f"{folder.name}/{{{' | '.join(names)}}}"]


def check_weights_dir(kind: str, weights_dir: str | os.PathLike[str]) -> list[Path]:
    """Check a ``kind`` diffusers weights folder without loading anything; return its weight files.

    Raises :class:`BackboneFolderError` listing every expected file and the ones missing, or naming the backbone
    the folder actually holds.
    """
    _check_kind(kind)
    root = Path(weights_dir)
    expected = "\n  ".join(expected_weights(kind))
    if not root.is_dir():
        raise BackboneFolderError(
            f"the {kind} weights folder {str(root)!r} {'is a file, not a folder' if root.exists() else 'does not exist'}. "
            f"Download the {kind} diffusers repository (e.g. `huggingface-cli download {_example_repo(kind)} --local-dir "
            f"DIR`) and pass that folder (--weights DIR; backbone.weights in a recipe); it must hold:\n  {expected}"
        )
    missing: list[str] = []
    files: list[Path] = []
    for rel in ("model_index.json", "transformer/config.json", "vae/config.json", "text_encoder/config.json",
                "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"):
        if (root / rel).is_file():
            files.append(root / rel)
        else:
            missing.append(rel)
    for comp, names in (("transformer", _DIFFUSERS_WEIGHTS), ("vae", _DIFFUSERS_WEIGHTS), ("text_encoder", _HF_WEIGHTS)):
        have, lack = _weight_files(root / comp, names)
        files += have
        missing += lack
    if not any((root / "tokenizer" / n).is_file() for n in ("tokenizer.json", "spiece.model")):
        missing.append("tokenizer/{tokenizer.json | spiece.model}")
    if missing:
        raise BackboneFolderError(
            f"the {kind} weights folder {root} is incomplete; missing:\n  " + "\n  ".join(missing)
            + f"\nA {kind} folder (diffusers layout) holds:\n  {expected}\nDownload the missing files (e.g. "
            f"`huggingface-cli download {_example_repo(kind)} --local-dir {root}`) or point --weights at a complete copy"
        )
    for rel, table in (("model_index.json", _PIPELINE_CLASS), ("transformer/config.json", _TRANSFORMER_CLASS),
                       ("vae/config.json", _VAE_CLASS)):
        try:
            name = json.loads((root / rel).read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError) as err:
            raise BackboneFolderError(f"cannot read {root / rel} ({err}); download it again") from err
        if name is not None and name != table[kind]:
            other = next((k for k, v in table.items() if v == name), None)
            hint = f"; it is a {other} folder: use --backbone {other}" if other else ""
            raise BackboneFolderError(f"{root / rel} names {name!r}, but --backbone {kind} needs {table[kind]!r}{hint}")
    return sorted(set(files))


def _example_repo(kind: str) -> str:
    return {"wan": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "cogvideox": "THUDM/CogVideoX-2b"}[kind]


def weights_fingerprint(files: list[Path], extra: list[Path] | None = None) -> str:
    """sha256 over each file's name, size and first/last MiB (cheap identity of multi-GB weights)."""
    h = hashlib.sha256()
    for path in [*files, *(extra or [])]:
        size = path.stat().st_size
        h.update(f"{path.parent.name}/{path.name}:{size}".encode())
        with open(path, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()



# ------------------------------------------------------------------------------------------------ debug folders

_DEBUG_WORDS = (
    "a the of and in on to with at is are shot cut global story scene characters setting man woman child dog cat "
    "red blue green yellow ball box door room street park walks runs jumps sits looks opens closes turns enters "
    "leaves left right up down camera close wide slowly quickly night day"
).split()


def _debug_tokenizer(folder: Path) -> None:
    """A word-level tokenizer (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2) written with ``save_pretrained``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in _DEBUG_WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)


def write_debug_weights(kind: str, folder: str | os.PathLike[str], *, seed: int = 0, text_len: int | None = None) -> Path:
    """Write a tiny random-weight ``kind`` folder in the diffusers layout (for tests and plumbing checks only).

    Wan: a 2-layer ``WanTransformer3DModel`` (16 latent channels, patch 1×2×2), a tiny ``AutoencoderKLWan``, a
    1-layer UMT5 encoder (16-d), UniPC flow scheduler. CogVideoX: a 2-layer ``CogVideoXTransformer3DModel``
    (4 latent channels, patch 2, sin-cos positions as in CogVideoX-2B), a tiny ``AutoencoderKLCogVideoX``, a
    1-layer T5 encoder, the CogVideoX DDIM v-prediction scheduler. Both use a word-level tokenizer; ``text_len``
    sets CogVideoX's ``max_text_seq_length`` (default 8). Outputs are noise-like: it checks plumbing only.
    """
    import diffusers
    import torch
    import transformers

    _check_kind(kind)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(seed))
    _debug_tokenizer(root / "tokenizer")
    vocab = len(_DEBUG_WORDS) + 3
    if kind == "wan":
        transformer = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32)
        vae: Any = diffusers.AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                              temperal_downsample=[False, True, True])
        encoder: Any = transformers.UMT5EncoderModel(transformers.UMT5Config(
            vocab_size=vocab, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, relative_attention_num_buckets=8))
        scheduler: Any = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                           flow_shift=3.0, num_train_timesteps=1000)
    else:
        transformer = diffusers.CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
            text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=int(text_len or 8))
        vae = diffusers.AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
        encoder = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=vocab, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, relative_attention_num_buckets=8))
        scheduler = diffusers.CogVideoXDDIMScheduler(
            prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True,
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=True,
            snr_shift_scale=3.0, num_train_timesteps=1000)
    transformer.save_pretrained(root / "transformer")
    vae.save_pretrained(root / "vae")
    encoder.save_pretrained(root / "text_encoder")
    scheduler.save_pretrained(root / "scheduler")
    index = {"_class_name": _PIPELINE_CLASS[kind], "_diffusers_version": diffusers.__version__,
             "transformer": ["diffusers", _TRANSFORMER_CLASS[kind]], "vae": ["diffusers", _VAE_CLASS[kind]],
             "text_encoder": ["transformers", type(encoder).__name__], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
             "scheduler": ["diffusers", type(scheduler).__name__]}
    with atomic_write(root / "model_index.json", "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=2)
    return root
