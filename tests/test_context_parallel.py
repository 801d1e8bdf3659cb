"""Context parallelism: the token split over ranks, and two gloo CPU processes whose sharded Wan / CogVideoX
forwards (and a joint backbone generation) equal the single-process result."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from storyreel.nn.layout import SequenceLayout
from storyreel.nn.masks import MaskPolicy, TokenMeta, get_policy
from storyreel.pipelines.context_parallel import all_gather_tokens, plan_shards

WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
           text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32)
COG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
           text_embed_dim=16, num_layers=2, sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
           max_text_seq_length=6)


def _layout(text_len: int) -> SequenceLayout:
    return SequenceLayout.scene(text_lens=[text_len] * 3, video_grids=[(3, 2, 3), (2, 2, 3), (1, 2, 3)],
                                global_text_len=text_len)


def test_shards_cover_the_video_stream_in_whole_frames():
    lay = _layout(4)
    for world in (1, 2, 3, 4, 6):
        sh = plan_shards(lay, world)
        assert sh.bounds[0][0] == 0 and sh.bounds[-1][1] == 36
        assert all(a[1] == b[0] for a, b in zip(sh.bounds, sh.bounds[1:]))  # contiguous, rank order
        assert all(n % 6 == 0 and n > 0 for n in sh.sizes) and max(sh.sizes) - min(sh.sizes) <= 6
        for r, segs in enumerate(sh.rank_segments):  # a rank's query segments hold exactly its tokens
            assert sum(sh.attn_layout.segments[j].length for j in segs) == sh.sizes[r]
        for j, seg in enumerate(sh.attn_layout.segments):  # pieces keep their parent's shot and modality
            parent = sh.stream.segments[sh.parents[j]]
            assert (seg.shot, seg.modality, seg.grid[1:]) == (parent.shot, parent.modality, parent.grid[1:])
        for name in ("full", "mask2dit", "mask2dit:v4", "block_diagonal", "causal_shots"):
            sh.check_policy(get_policy(name))
    with pytest.raises(ValueError, match="6 latent frame.*over 7 ranks"):
        plan_shards(lay, 7)
    assert all_gather_tokens(torch.ones(2, 3), [3], dim=1).shape == (2, 3)


@dataclass(frozen=True, repr=False)
class _SameSegment(MaskPolicy):
    """A policy that reads segment boundaries (splitting a shot over ranks would change it)."""

    @property
    def name(self) -> str:
        return "same_segment"

    def allowed(self, q: TokenMeta, k: TokenMeta) -> torch.Tensor:
        return q.segment == k.segment


def test_policies_that_read_segment_boundaries_are_refused():
    sh = plan_shards(_layout(4), 4)  # shot 0 is cut in two
    with pytest.raises(ValueError, match="depends on segment boundaries"):
        sh.check_policy(_SameSegment())
    plan_shards(_layout(4), 2).check_policy(_SameSegment())  # no shot is cut: the same mask


# ------------------------------------------------------------------------------------------------ two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(adapter, layout: SequenceLayout, t_scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    frames = sum(s.grid[0] * adapter.patch_size[0] for s in layout.segments if s.is_visual)
    h, w = (s.grid[1:] for s in layout.segments if s.is_visual).__next__()
    x = torch.randn(1, adapter.in_channels, frames, h * adapter.patch_size[1], w * adapter.patch_size[2], generator=g)
    ctx = torch.randn(1, sum(s.length for s in layout.segments if not s.is_visual), adapter.text_dim, generator=g)
    t = torch.tensor([[0.9, 0.4, 0.1]]) * t_scale
    return x, t, ctx


def _worker(rank: int, world: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from storyreel.models.adapters import load_backbone
        from storyreel.pipelines.backbone import BackboneDefaults, BackbonePipeline
        from storyreel.pipelines.context_parallel import context_parallel_forward
        from storyreel.script import parse_script

        errors: dict[str, float] = {}
        tokens: dict[str, tuple[int, int]] = {}
        cases = [("wan", WAN, "mask2dit", 1000.0), ("wan", WAN, "causal_shots", 1000.0), ("wan", WAN, "full", 0.0),
                 ("cogvideox", COG, "mask2dit", 999.0), ("cogvideox", {**COG, "use_rotary_positional_embeddings": True},
                                                         "hybrid:block_diagonal*1,mask2dit", 999.0)]
        for i, (kind, cfg, policy, scale) in enumerate(cases):
            torch.manual_seed(0)  # the same random weights on every rank
            adapter = load_backbone(kind, cfg).eval()
            layout = _layout(adapter.text_len)
            x, t, ctx = _inputs(adapter, layout, scale, seed=i)
            blocks = adapter.transformer.blocks if kind == "wan" else adapter.transformer.transformer_blocks
            seen: list[int] = []  # video tokens entering the first block
            hook = blocks[0].register_forward_pre_hook(
                lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).shape[1]), with_kwargs=True)
            with torch.no_grad():
                ref = adapter(x, t, ctx, layout, policy=policy)
            out = context_parallel_forward(adapter, x, t, ctx, layout, policy=policy)
            hook.remove()
            errors[f"{kind}/{policy}/{scale}"] = float((out - ref).abs().max())
            tokens[kind] = (seen[-1], seen[0])
        # a whole joint generation, context-parallel vs one process
        script = parse_script({"title": "t", "global": {"characters": [], "setting": "a park"},
                               "shots": [{"prompt": "a man walks"}, {"prompt": "a red ball"}, {"prompt": "the dog runs"}],
                               "settings": {"seed": 5, "resolution": [32, 32], "frames": 9, "fps": 8}})
        pipe = BackbonePipeline.from_weights("wan", Path(root) / "wan", text_len=8,
                                             defaults=BackboneDefaults(steps=2, guidance=2.0))
        one = pipe.generate(script, mode="joint")
        cp = pipe.generate(script, mode="joint", context_parallel=True)
        errors["pipeline"] = max(float((a - b).abs().max()) for a, b in zip(one.latents, cp.latents))
        torch.save({"errors": errors, "tokens": tokens}, Path(root) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    from storyreel.pipelines.backbone_weights import write_debug_weights

    write_debug_weights("wan", tmp_path / "wan", seed=0)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        errors = saved["errors"]
        assert len(errors) == 6
        bad = {k: v for k, v in errors.items() if not v <= 1e-5}
        assert not bad, bad
        # each rank ran the blocks on its own half of the 36 video tokens (shot 0's 3 frames | shots 1-2)
        assert saved["tokens"] == {"wan": (18, 36), "cogvideox": (18, 36)}
