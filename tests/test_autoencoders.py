"""Video autoencoders: exact patch codec, causal VAE shapes/causality/training/save-load, config checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from storyreel.autoencoders import (
    AUTOENCODERS,
    VAE_CONFIGS,
    CausalVideoVAE,
    PatchAutoencoder,
    VAEConfig,
    get_autoencoder,
    latent_frames,
    pixel_frames,
    vae_loss,
)
from storyreel.autoencoders.losses import edge_loss, kl_to_standard_normal


def _video(b: int, t: int, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def _randomised(model: CausalVideoVAE, seed: int = 0) -> CausalVideoVAE:
    """Give every parameter random values (the zero-initialised residual branches included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def test_frame_arithmetic() -> None:
    assert [latent_frames(t, 4) for t in (1, 2, 5, 6, 16, 17)] == [1, 2, 2, 3, 5, 5]
    assert [pixel_frames(n, 4) for n in (1, 2, 5)] == [1, 5, 17]
    assert latent_frames(7, 1) == 7


# -- patch autoencoder ------------------------------------------------------------------------------
@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2), (4, 4, 4)])
@pytest.mark.parametrize("frames", [1, 2, 5, 16, 17])
def test_patch_exact_round_trip(patch: tuple[int, int, int], frames: int) -> None:
    ae = PatchAutoencoder(patch)
    x = _video(2, frames, 8, 8)
    z = ae.encode(x)
    assert tuple(z.shape[1:]) == ae.latent_shape(frames, 8, 8)
    assert z.shape[1] == 3 * patch[0] * patch[1] * patch[2]
    y = ae.decode(z, num_frames=frames)
    assert torch.equal(y, x)
    if (frames - 1) % patch[0] == 0:  # no end padding: the default length is the input length
        assert torch.equal(ae.decode(z), x)


def test_patch_single_image_and_validation() -> None:
    ae = get_autoencoder("patch", patch=(4, 2, 2))
    img = _video(1, 1, 4, 6)
    z = ae.encode(img)
    assert z.shape == (1, 48, 1, 2, 3)
    assert torch.equal(ae.decode(z), img)
    with pytest.raises(ValueError, match="patch"):
        PatchAutoencoder((1, 2, 4))
    with pytest.raises(ValueError, match="patch"):
        PatchAutoencoder((0, 2, 2))
    with pytest.raises(ValueError, match="divisible"):
        ae.encode(_video(1, 3, 5, 6))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        ae.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="num_frames"):
        ae.decode(z.repeat(1, 1, 3, 1, 1), num_frames=5)  # 3 latent frames hold 6..9 frames


# -- causal VAE -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def debug_vae() -> CausalVideoVAE:
    torch.manual_seed(0)
    return _randomised(CausalVideoVAE(VAE_CONFIGS["debug"]))


@pytest.mark.parametrize("frames", [1, 5, 16, 17])
def test_vae_shapes(debug_vae: CausalVideoVAE, frames: int) -> None:
    x = _video(2, frames)
    with torch.no_grad():
        z = debug_vae.encode(x)
        assert tuple(z.shape) == (2, *debug_vae.latent_shape(frames, 16, 16))
        assert z.shape[2] == 1 + (frames - 1 + 3) // 4
        y = debug_vae.decode(z, num_frames=frames)
        full = debug_vae.decode(z)
    assert y.shape == x.shape
    assert full.shape[2] == 1 + (z.shape[2] - 1) * 4
    assert y.min() >= -1 and y.max() <= 1
    assert torch.equal(full[:, :, :frames], y)


def test_vae_encoder_is_causal(debug_vae: CausalVideoVAE) -> None:
    x = _video(1, 9)  # latent frames: {0}, {1..4}, {5..8}
    with torch.no_grad():
        base = debug_vae.encode(x)
        for k, first_changed in [(1, 1), (4, 1), (5, 2), (8, 2)]:
            x2 = x.clone()
            x2[:, :, k] = -x2[:, :, k]
            z2 = debug_vae.encode(x2)
            assert torch.equal(z2[:, :, :first_changed], base[:, :, :first_changed]), k
            assert not torch.allclose(z2[:, :, first_changed], base[:, :, first_changed]), k


def test_vae_decoder_is_causal(debug_vae: CausalVideoVAE) -> None:
    z = torch.randn(1, 4, 3, 2, 2)
    with torch.no_grad():
        base = debug_vae.decode(z)
        z2 = z.clone()
        z2[:, :, 2] += 1.0
        out = debug_vae.decode(z2)
    assert torch.equal(out[:, :, :5], base[:, :, :5])  # frames 0..4 come from latent frames 0, 1
    assert not torch.allclose(out[:, :, 5:], base[:, :, 5:])


def test_vae_batch_items_are_independent(debug_vae: CausalVideoVAE) -> None:
    x = _video(3, 5)
    with torch.no_grad():
        together = debug_vae.encode(x)
        alone = debug_vae.encode(x[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-5)


def test_vae_sampling_and_normalisation() -> None:
    vae = _randomised(CausalVideoVAE(VAE_CONFIGS["debug"]))
    x = _video(2, 5)
    with torch.no_grad():
        mean, logvar = vae.encode_dist(x)
        assert torch.equal(vae.encode(x), mean)  # shift 0, scale 1
        s1 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        s2 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        assert torch.equal(s1, s2) and not torch.allclose(s1, mean)
        cfg = vae.fit_latent_normalisation([x[:1], x[1:]])
        assert vae.config is cfg and cfg.shift_factor != 0.0
        z = vae.encode(x)
        assert abs(float(z.mean())) < 1e-4 and abs(float(z.std(unbiased=False)) - 1) < 1e-4
        assert torch.allclose(vae.denormalise(z), mean, atol=1e-5)
        assert torch.allclose(vae.decode(z), vae.decode_raw(mean).clamp(-1, 1), atol=1e-5)


def test_vae_loss_terms_and_optimisation_reduces_loss() -> None:
    torch.manual_seed(0)
    vae = CausalVideoVAE(VAE_CONFIGS["debug"])
    # a smooth moving gradient, repeated: something a tiny VAE can fit quickly
    t = torch.arange(5).float()[:, None, None]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    frames = torch.stack([torch.sin(2 * xx + 0.3 * t), torch.cos(2 * yy - 0.2 * t), xx * yy * torch.ones_like(t)])
    video = frames[None] * 0.8  # [1, 3, 5, 16, 16], the same batch at every step
    loss0, logs0 = vae_loss(vae, video, sample=False)
    assert set(logs0) == {"loss", "l1", "mse", "kl", "edge", "logvar"}
    assert all(isinstance(v, float) for v in logs0.values())
    expect = logs0["l1"] + logs0["mse"] + 0.1 * logs0["edge"]
    assert abs(logs0["loss"] - expect) < 1e-3
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        loss, _ = vae_loss(vae, video, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss1, logs1 = vae_loss(vae, video, sample=False)
    assert logs1["loss"] < 0.7 * logs0["loss"], (logs0, logs1)
    with pytest.raises(ValueError, match="kl_weight"):
        vae_loss(vae, video, kl_weight=-1.0)

    # pixel weights: all ones is the plain mean; weight only on one half is that half's mean
    with torch.no_grad():
        recon = vae.decode_raw(vae.encode_dist(video)[0], num_frames=5)
    ones = torch.ones(1, 1, 5, 16, 16)
    _, plain = vae_loss(vae, video, sample=False)
    _, same = vae_loss(vae, video, sample=False, pixel_weights=ones)
    assert same["l1"] == pytest.approx(plain["l1"], rel=1e-5) and same["mse"] == pytest.approx(plain["mse"], rel=1e-5)
    half = ones.clone()
    half[..., 8:] = 0.0
    _, left = vae_loss(vae, video, sample=False, pixel_weights=half)
    assert left["l1"] == pytest.approx(float((recon - video)[..., :8].abs().mean()), rel=1e-4)
    with pytest.raises(ValueError, match="pixel_weights"):
        vae_loss(vae, video, pixel_weights=torch.ones(1, 3, 5, 16, 16))


def test_loss_helpers() -> None:
    mean = torch.zeros(3)
    assert torch.allclose(kl_to_standard_normal(mean, torch.zeros(3)), torch.zeros(3))
    assert torch.allclose(kl_to_standard_normal(torch.ones(1), torch.zeros(1)), torch.tensor([0.5]))
    v = _video(1, 3, 4, 4)
    assert float(edge_loss(v, v)) == 0.0
    assert float(edge_loss(v, v + 0.5)) == 0.0  # a constant offset has no edges
    assert float(edge_loss(v, torch.zeros_like(v))) > 0


def test_vae_save_load_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = dataclasses.replace(VAE_CONFIGS["debug"], scaling_factor=0.5, shift_factor=0.1)
    vae = _randomised(CausalVideoVAE(cfg), seed=3)
    vae.save_pretrained(tmp_path / "vae")
    loaded = CausalVideoVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == cfg and isinstance(loaded.config.channel_multipliers, tuple)
    via_registry = get_autoencoder(tmp_path / "vae")
    x = _video(1, 5)
    with torch.no_grad():
        z = vae.encode(x)
        assert torch.equal(loaded.eval().encode(x), z)
        assert torch.equal(via_registry.eval().encode(x), z)
        assert torch.equal(loaded.decode(z), vae.decode(z))


def test_registry() -> None:
    assert {"patch", "vae-debug", "vae-tiny", "vae-small"} <= set(AUTOENCODERS)
    vae = get_autoencoder("vae-debug")
    assert isinstance(vae, CausalVideoVAE) and vae.config == VAE_CONFIGS["debug"]
    assert (vae.spatial_factor, vae.temporal_factor, vae.latent_channels) == (8, 4, 4)
    assert vae.num_parameters() == sum(p.numel() for p in vae.parameters()) > 0
    assert get_autoencoder("vae-debug", latent_channels=8).latent_channels == 8
    with pytest.raises(ValueError, match="latent_channels"):
        get_autoencoder("vae-tiny", latent_channels=0)
    with pytest.raises(ValueError, match="vae-debug"):
        get_autoencoder("vae-huge")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("base_channels", 0),
        ("channel_multipliers", ()),
        ("channel_multipliers", (1, 0, 2, 2)),
        ("num_res_blocks", 0),
        ("latent_channels", 0),
        ("spatial_downsample", 4),  # does not match 4 levels
        ("temporal_downsample", 3),
        ("temporal_downsample", 16),
        ("norm_groups", 3),  # does not divide 8
        ("scaling_factor", 0.0),
        ("scaling_factor", float("nan")),
        ("shift_factor", float("inf")),
    ],
)
def test_bad_config_raises_naming_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(VAE_CONFIGS["debug"], **{field: value})


def test_config_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        VAEConfig(8)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        VAE_CONFIGS["debug"].latent_channels = 3  # type: ignore[misc]
