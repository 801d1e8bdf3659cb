"""Backbone pipelines (Wan / CogVideoX through diffusers) on tiny random weights folders, on CPU: the weights
folder check, every mode end to end into a run folder, the backbone's own schedulers, KV-cached causal generation
against the uncached path, and one-shot equivalence with diffusers' own WanPipeline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from storyreel.pipelines import GenerationError
from storyreel.pipelines.backbone import BackboneDefaults, BackbonePipeline, generate_backbone
from storyreel.pipelines.backbone_weights import BackboneFolderError, check_weights_dir, expected_weights, write_debug_weights
from storyreel.script import parse_script


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return write_debug_weights("wan", tmp_path_factory.mktemp("weights") / "wan", seed=0)


@pytest.fixture(scope="module")
def cog_dir(tmp_path_factory):
    return write_debug_weights("cogvideox", tmp_path_factory.mktemp("weights") / "cog", seed=0)


@pytest.fixture(scope="module")
def wan(wan_dir):
    return BackbonePipeline.from_weights("wan", wan_dir, text_len=12, defaults=BackboneDefaults(steps=2, guidance=2.0))


@pytest.fixture(scope="module")
def cog(cog_dir):
    return BackbonePipeline.from_weights("cogvideox", cog_dir, defaults=BackboneDefaults(steps=2, guidance=2.0))


def _script(n: int = 2, *, frames: int = 5, size: int = 32, cut: bool = True, seed: int = 3, shots: list | None = None):
    words = ["a man walks in the park", "a red ball rolls to the door", "the dog runs left", "a woman opens the box"]
    return parse_script({
        "title": "t", "global": {"story": "a day in the park", "setting": "park", "characters": []},
        "shots": shots or [{"prompt": words[i % 4], "cut": cut if i else True} for i in range(n)],
        "settings": {"seed": seed, "resolution": [size, size], "frames": frames, "fps": 8},
    })


# ------------------------------------------------------------------------------------------------ weights folder


def test_missing_folder_lists_the_expected_files(tmp_path):
    with pytest.raises(BackboneFolderError) as err:
        check_weights_dir("wan", tmp_path / "nope")
    msg = str(err.value)
    for line in expected_weights("wan"):
        assert line in msg
    assert "does not exist" in msg and "huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in msg


def test_incomplete_folder_names_each_missing_file_before_loading(wan_dir, tmp_path, monkeypatch):
    broken = shutil.copytree(wan_dir, tmp_path / "wan")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (broken / "scheduler" / "scheduler_config.json").unlink()
    import storyreel.models.adapters as adapters

    def boom(*a, **k):
        raise AssertionError("weights were loaded before the folder was checked")

    monkeypatch.setattr(adapters, "load_backbone", boom)
    with pytest.raises(BackboneFolderError) as err:
        BackbonePipeline.from_weights("wan", broken)
    msg = str(err.value)
    assert "missing:\n  scheduler/scheduler_config.json\n  vae/{diffusion_pytorch_model.safetensors" in msg
    assert "transformer/config.json" in msg  # the full list of what a folder holds follows
    with pytest.raises(GenerationError, match="incomplete"):
        generate_backbone(_script(), tmp_path / "out", backbone="wan", weights=broken)


def test_sharded_index_with_a_missing_shard(wan_dir, tmp_path):
    folder = shutil.copytree(wan_dir, tmp_path / "wan")
    te = folder / "text_encoder"
    (te / "model.safetensors").rename(te / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (te / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(BackboneFolderError, match=r"missing:\n  text_encoder/model-00002-of-00002.safetensors"):
        check_weights_dir("wan", folder)


def test_folder_of_the_other_backbone_is_named(cog_dir):
    with pytest.raises(BackboneFolderError, match="it is a cogvideox folder: use --backbone cogvideox"):
        check_weights_dir("wan", cog_dir)
    with pytest.raises(GenerationError, match="unknown; choose one of wan, cogvideox"):
        check_weights_dir("sora", cog_dir)


# ------------------------------------------------------------------------------------------------ checks


def test_checks_name_the_fix_before_any_compute(wan, cog):
    with pytest.raises(GenerationError, match=r"shots\[0\] has 6 frames \(use 5 or 9\)"):
        wan.check(_script(frames=6))
    with pytest.raises(GenerationError, match=r"shots\[0\] has 5 frames \(use 1 or 9\)"):
        cog.check(_script(frames=5))
    with pytest.raises(GenerationError, match="must be a multiple of 16.*use 32 or 48"):
        wan.check(_script(size=40))
    with pytest.raises(GenerationError, match="applies to flow-matching schedulers"):
        cog.check(_script(frames=9), shift=3.0)
    with pytest.raises(GenerationError, match="cannot be used in mode causal"):
        wan.check(_script(), mode="causal", policy="full")
    assert wan.check(_script(3, cut=False), mode="causal", context_window=2).window == 2  # one history shot each
    shots = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c", "cut": False, "history": [1]}]
    with pytest.raises(GenerationError, match="needs 2 history shot.*leaves 1"):
        wan.check(_script(3, shots=shots), mode="causal", context_window=2)
    plan = wan.check(_script(3))
    assert (plan.mode, plan.solver, plan.shift, plan.latent_shapes[0]) == ("joint", "UniPCMultistepScheduler", 3.0, (16, 2, 4, 4))
    assert cog.check(_script(frames=9)).latent_shapes[0] == (4, 3, 4, 4)


# ------------------------------------------------------------------------------------------------ generation


def test_wan_joint_run_folder_and_determinism(wan_dir, tmp_path, one_thread):
    opts = dict(backbone="wan", weights=wan_dir, steps=2, guidance=2.0, progress=False)
    scene = generate_backbone(_script(2), tmp_path / "a", **opts)
    assert scene["n_shots"] == 2 and scene["generator"] == "storyreel.pipelines.backbone"
    assert scene["backbone"]["kind"] == "wan" and scene["backbone"]["scheduler"] == "UniPCMultistepScheduler"
    for name in ("scene.mp4", "storyboard.png", "scene.json", "shots/01.mp4", "shots/02.json"):
        assert (tmp_path / "a" / name).is_file()
    again = generate_backbone(_script(2), tmp_path / "b", **opts)
    assert again["files"]["video_sha256"] == scene["files"]["video_sha256"]
    other = generate_backbone(_script(2, seed=4), tmp_path / "c", **opts)
    assert other["files"]["video_sha256"] != scene["files"]["video_sha256"]


def test_causal_kv_cache_equals_recomputed_history(wan, one_thread):
    script = _script(3, cut=False)
    cached = wan.generate(script, mode="causal", kv_cache=True)
    plain = wan.generate(script, mode="causal", kv_cache=False)
    for a, b in zip(cached.latents, plain.latents):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert cached.meta["generation"]["history"] == {"1": [], "2": [1], "3": [1, 2]}


def test_causal_shot_does_not_depend_on_later_shots(wan, one_thread):
    two = wan.generate(_script(2, cut=False), mode="causal")
    three = wan.generate(_script(3, cut=False), mode="causal")
    torch.testing.assert_close(two.latents[1], three.latents[1], atol=1e-6, rtol=1e-6)


def test_autoregressive_with_renoised_history(wan, cog, one_thread):
    out = wan.generate(_script(2, cut=False), mode="autoregressive", t_c=0.2)
    assert out.meta["t_c"] == 0.2 and len(out.videos) == 2
    res = cog.generate(_script(2, frames=9, cut=False), mode="autoregressive", t_c=0.1)
    assert res.videos[1].shape == (9, 32, 32, 3)


def test_cogvideox_ddim_and_dpm(cog, one_thread):
    res = cog.generate(_script(2, frames=9))
    assert res.meta["backbone"]["prediction"] == "v" and res.meta["solver"] == "CogVideoXDDIMScheduler"
    assert [v.shape for v in res.videos] == [(9, 32, 32, 3)] * 2
    dpm = BackbonePipeline(kind="cogvideox", backbone=cog.backbone, autoencoder=cog.autoencoder,
                           text_encoder=cog.text_encoder, defaults=cog.defaults,
                           scheduler_config={**cog.scheduler_config, "_class_name": "CogVideoXDPMScheduler"})
    a, b = dpm.generate(_script(1, frames=9)), dpm.generate(_script(1, frames=9))
    assert a.meta["solver"] == "CogVideoXDPMScheduler"
    torch.testing.assert_close(a.latents[0], b.latents[0])  # its stochastic steps are seeded per shot


def test_one_shot_equals_diffusers_wan_pipeline(wan, wan_dir, one_thread):
    """One shot, full attention, no global prompt: the same latents as diffusers' WanPipeline on the same weights."""
    import diffusers

    from storyreel.pipelines.scene import shot_seed

    pipe = BackbonePipeline(kind="wan", backbone=wan.backbone, autoencoder=wan.autoencoder,
                            text_encoder=wan.text_encoder, scheduler_config=wan.scheduler_config,
                            defaults=BackboneDefaults(steps=3, guidance=4.0), global_prompt=False)
    script = _script(1, frames=5)
    ours = pipe.generate(script, policy="full").latents[0]
    ref_pipe = diffusers.WanPipeline(tokenizer=wan.text_encoder.tokenizer, text_encoder=wan.text_encoder.encoder,
                                     vae=wan.autoencoder.vae, scheduler=wan.make_scheduler(),
                                     transformer=wan.backbone.transformer)
    noise = torch.randn((1, 16, 2, 4, 4), generator=torch.Generator().manual_seed(shot_seed(3, 0)))
    ref = ref_pipe(prompt=script.shot_prompt_text(0), negative_prompt="", height=32, width=32, num_frames=5,
                   num_inference_steps=3, guidance_scale=4.0, latents=noise, output_type="latent",
                   max_sequence_length=wan.text_len).frames
    torch.testing.assert_close(ours, ref.float(), atol=1e-5, rtol=1e-5)


def test_one_shot_equals_diffusers_cogvideox_pipeline(cog, one_thread):
    """The same for CogVideoX (DDIM, v-prediction) against diffusers' CogVideoXPipeline."""
    import diffusers

    from storyreel.pipelines.scene import shot_seed

    pipe = BackbonePipeline(kind="cogvideox", backbone=cog.backbone, autoencoder=cog.autoencoder,
                            text_encoder=cog.text_encoder, scheduler_config=cog.scheduler_config,
                            defaults=BackboneDefaults(steps=3, guidance=4.0), global_prompt=False)
    script = _script(1, frames=9)
    ours = pipe.generate(script, policy="full").latents[0]  # [1, C, T, h, w]
    ref_pipe = diffusers.CogVideoXPipeline(tokenizer=cog.text_encoder.tokenizer, text_encoder=cog.text_encoder.encoder,
                                           vae=cog.autoencoder.vae, scheduler=cog.make_scheduler(),
                                           transformer=cog.backbone.transformer)
    noise = torch.randn((1, 4, 3, 4, 4), generator=torch.Generator().manual_seed(shot_seed(3, 0)))
    ref = ref_pipe(prompt=script.shot_prompt_text(0), negative_prompt="", height=32, width=32, num_frames=9,
                   num_inference_steps=3, guidance_scale=4.0, latents=noise.permute(0, 2, 1, 3, 4),
                   output_type="latent", max_sequence_length=cog.text_len).frames
    torch.testing.assert_close(ours, ref.permute(0, 2, 1, 3, 4).float(), atol=1e-5, rtol=1e-5)


def test_resume_and_extend_reuse_finished_shots(wan, tmp_path, one_thread):
    from storyreel.outputs import SceneWriter

    run = tmp_path / "run"
    full = wan.generate(_script(2, cut=False), mode="causal", writer=SceneWriter(run, fps=8))
    video = (run / "shots" / "02.mp4").read_bytes()
    (run / "shots" / "02.mp4").unlink()  # an interrupted run: shot 2 never finished
    resumed = wan.generate(_script(2, cut=False), mode="causal", writer=SceneWriter(run, fps=8), resume=True)
    assert (resumed.reused, resumed.generated) == ([0], [1])
    assert (run / "shots" / "02.mp4").read_bytes() == video and resumed.scene["shots"] == full.scene["shots"]
    extended = wan.generate(_script(3, cut=False), mode="extend", writer=SceneWriter(run, fps=8))
    assert (extended.reused, extended.generated) == ([0, 1], [2])
    assert extended.meta["generation"]["history"]["3"] == [1, 2]
