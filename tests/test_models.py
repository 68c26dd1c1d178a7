"""EMO models: shapes through each module, save → load round trips, zero-initialised layers start as no-ops."""

from __future__ import annotations

import pytest
import torch

from emo_stream.models import (
    AudioProjection,
    EmoDenoiser,
    FaceLocator,
    ImageProjection,
    ReferenceNet,
    SmallDecoder,
    SpeechEncoder,
    make_scheduler,
    speed_to_buckets,
    tiny_components,
)
from emo_stream.models import configs as named

TINY_WHISPER = {"d_model": 16, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                "num_mel_bins": 16, "max_source_positions": 50, "decoder_layers": 1, "decoder_attention_heads": 2,
                "decoder_ffn_dim": 32, "vocab_size": 60000}
TINY_WAV2VEC2 = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
                 "conv_dim": [8] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}


@pytest.fixture(scope="module", params=["inline", "separate"])
def components(request):
    return tiny_components(seed=0, audio_mode=request.param)


def dummy_inputs(components, frames=3, seed=0):
    """Seeded denoiser inputs for a tiny model: noisy latents, audio tokens, a bank with motion frames."""
    gen = torch.Generator().manual_seed(seed)
    cfg = components.denoiser.config
    tokens = None
    if components.image_projection is not None:
        tokens = components.image_projection(torch.randn(1, components.image_projection.config.embedding_dim,
                                                         generator=gen)).tokens
    ref_tokens = tokens if components.reference_net.config.cross_attention_dim is not None else None
    bank = components.reference_net.encode_portrait(torch.randn(1, 4, 8, 8, generator=gen), ref_tokens)
    motion = components.reference_net.encode_motion_frames(torch.randn(1, 2, 4, 8, 8, generator=gen), ref_tokens)
    return {
        "sample": torch.randn(1, 4, frames, 8, 8, generator=gen),
        "timestep": 500,
        "audio_embeds": torch.randn(1, frames, cfg.audio_tokens, cfg.audio_dim, generator=gen),
        "encoder_hidden_states": tokens,
        "reference_bank": bank.with_motion(motion),
        "face_features": components.face_locator(torch.rand(1, components.face_locator.config.conditioning_channels,
                                                            64, 64, generator=gen)).features,
        "speed_buckets": torch.rand(1, frames, cfg.num_speed_buckets, generator=gen),
    }


@torch.no_grad()
def test_denoiser_maps_a_clip_to_a_clip(components):
    inputs = dummy_inputs(components)
    out = components.denoiser(**inputs).sample
    assert out.shape == inputs["sample"].shape
    assert torch.isfinite(out).all()
    (as_tuple,) = components.denoiser(**inputs, return_dict=False)
    assert torch.equal(as_tuple, out)


@torch.no_grad()
def test_reference_bank_has_one_entry_per_spatial_block(components):
    bank = dummy_inputs(components)["reference_bank"]
    blocks = components.denoiser.transformer_blocks()
    assert list(bank.features) == list(blocks)
    for name, feats in bank.features.items():
        width = blocks[name].norm1.normalized_shape[0]
        assert feats.shape[0] == 1 and feats.shape[-1] == width
        assert bank.motion[name].shape == (1, 2, *feats.shape[1:])
    assert bank.num_motion_frames == 2
    assert bank.expand(3).batch_size == 3


@torch.no_grad()
def test_face_locator_audio_and_image_projections_shapes():
    locator = FaceLocator(embedding_channels=32, conditioning_channels=3, block_out_channels=(4, 8, 8, 16))
    assert locator(torch.rand(2, 3, 64, 48)).features.shape == (2, 32, 8, 6)
    proj = AudioProjection(window=5, num_layers=3, channels=8, intermediate_dim=16, output_dim=12, context_tokens=4)
    assert proj(torch.randn(2, 7, 5, 3, 8)).tokens.shape == (2, 7, 4, 12)
    with pytest.raises(ValueError, match="audio states"):
        proj(torch.randn(2, 7, 4, 3, 8))
    image = ImageProjection(cross_attention_dim=24, embedding_dim=8, context_tokens=2)
    assert image(torch.randn(3, 8)).tokens.shape == (3, 2, 24)


@pytest.mark.parametrize(
    ("kind", "config", "states"),
    [
        ("logmel", {"n_mels": 16, "hidden_size": 16, "num_layers": 2}, 3),
        ("whisper", TINY_WHISPER, 3),
        ("wav2vec2", TINY_WAV2VEC2, 2),
    ],
)
@torch.no_grad()
def test_speech_encoders_window_all_hidden_states_per_frame(kind, config, states):
    encoder = SpeechEncoder(kind=kind, encoder_config=config, window_before=2, window_after=1)
    audio = torch.randn(2, 16000) * 0.1
    out = encoder(audio, num_frames=25, fps=25.0).states
    assert out.shape == (2, 25, 4, states, 16)
    assert encoder.num_states == states and encoder.window == 4
    assert SpeechEncoder.tokens(out).shape == (2, 25, 4 * states, 16)


@torch.no_grad()
def test_speech_windows_follow_the_audio_in_time():
    """Frame i's window is centred on the audio at i / fps: a click moves the frames it shows up in."""
    encoder = SpeechEncoder(kind="logmel", encoder_config={"n_mels": 16, "hidden_size": 8, "num_layers": 1},
                            window_before=0, window_after=0)
    audio = torch.zeros(1, 16000)
    baseline = encoder(audio, 25, 25.0).states
    audio[0, 8000:8160] = 0.9  # a click at 0.5 s = frame 12.5
    changed = (encoder(audio, 25, 25.0).states - baseline).abs().flatten(2).amax(-1)[0]
    assert set(torch.nonzero(changed > 1e-4).flatten().tolist()) <= {11, 12, 13, 14}


@torch.no_grad()
def test_small_decoder_upsamples_8x_to_rgb():
    decoder = SmallDecoder(latent_channels=4, block_out_channels=(16, 16, 8, 8), num_blocks=(1, 1, 1, 1))
    assert decoder(torch.randn(2, 4, 8, 6)).sample.shape == (2, 3, 64, 48)
    assert decoder.upscale == 8


@pytest.mark.parametrize("name", ["DDIMScheduler", "LCMScheduler", "TCDScheduler"])
def test_schedulers_use_the_relatives_settings(name):
    scheduler = make_scheduler(name)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.rescale_betas_zero_snr
    scheduler.set_timesteps(4)
    assert int(scheduler.timesteps[0]) == 999  # trailing spacing starts at the last (zero-SNR) step
    # Zero terminal SNR: the last training step carries no signal.
    assert float(scheduler.alphas_cumprod[-1]) < 1e-6
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("EulerScheduler")


def test_speed_buckets_are_soft_and_ordered():
    buckets = speed_to_buckets(torch.tensor([[0.0, 0.5, 1.0]]), centers=[0.0, 0.5, 1.0], radius=1.0)
    assert buckets.shape == (1, 3, 3)
    assert torch.all(buckets.abs() < 1)
    assert buckets[0, 1, 0] > 0 > buckets[0, 1, 2]


@pytest.mark.parametrize(
    "make",
    [
        lambda c: c.denoiser,
        lambda c: c.reference_net,
        lambda c: c.face_locator,
        lambda c: c.speech_encoder,
        lambda c: c.small_decoder,
        lambda c: c.audio_projection,
        lambda c: c.image_projection,
    ],
    ids=["denoiser", "reference_net", "face_locator", "speech_encoder", "small_decoder", "audio_projection",
         "image_projection"],
)
@torch.no_grad()
def test_save_then_load_gives_identical_outputs(make, tmp_path):
    components = tiny_components(seed=3, audio_mode="separate")
    model = make(components)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = type(model).from_pretrained(tmp_path, low_cpu_mem_usage=False).eval()
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    # Same weights, same outputs (up to kernel rounding: freshly loaded tensors may be aligned differently).
    same = lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # noqa: E731
    if isinstance(model, EmoDenoiser):
        inputs = dummy_inputs(components)
        same(model(**inputs).sample, loaded(**inputs).sample)
    elif isinstance(model, ReferenceNet):
        x, tokens = torch.randn(2, 4, 8, 8), torch.randn(2, 2, 24)
        a, b = model(x, 0, tokens).features, loaded(x, 0, tokens).features
        assert a.keys() == b.keys()
        for k in a:
            same(a[k], b[k])
    elif isinstance(model, SpeechEncoder):
        audio = torch.randn(1, 8000)
        same(model(audio, 10, 25.0).states, loaded(audio, 10, 25.0).states)
    else:
        shapes = {FaceLocator: (1, 3, 64, 64), SmallDecoder: (1, 4, 8, 8), AudioProjection: (1, 2, 4, 2, 16),
                  ImageProjection: (1, 8)}
        x = torch.randn(shapes[type(model)])
        same(model(x, return_dict=False)[0], loaded(x, return_dict=False)[0])


@torch.no_grad()
def test_zero_initialised_layers_are_no_ops_on_a_fresh_model():
    """Face locator, temporal layers and speed input add nothing until trained (imported weights stay exact)."""
    fresh = tiny_components(seed=1, live=False)
    inputs = dummy_inputs(fresh)
    assert torch.count_nonzero(inputs["face_features"]) == 0
    full = fresh.denoiser(**inputs).sample
    bare = dict(inputs, face_features=None, speed_buckets=None,
                reference_bank=inputs["reference_bank"].with_motion(None))
    assert torch.allclose(full, fresh.denoiser(**bare).sample, atol=1e-6)


@torch.no_grad()
def test_hallo_inference_path_skips_plain_block_motion_modules():
    """``plain_block_motion=False`` (Hallo) leaves the temporal layers of blocks without attention unused."""
    components = tiny_components(seed=2, audio_mode="separate")
    assert components.denoiser.config.plain_block_motion is False
    inputs = dummy_inputs(components)
    before = components.denoiser(**inputs).sample
    for module in components.denoiser.down_blocks[1].motion_modules.modules():
        for p in module.parameters(recurse=False):
            p.add_(torch.randn_like(p))
    assert torch.equal(before, components.denoiser(**inputs).sample)


def test_config_errors_are_explicit():
    with pytest.raises(ValueError, match="audio_mode"):
        EmoDenoiser(**{**named.tiny()["denoiser"], "audio_mode": "both"})
    with pytest.raises(ValueError, match="cross_attention_dim == audio_dim"):
        EmoDenoiser(**{**named.tiny()["denoiser"], "cross_attention_dim": 12})
    with pytest.raises(ValueError, match="use_motion_module"):
        EmoDenoiser(**{**named.tiny()["denoiser"], "use_motion_module": False})


@torch.no_grad()
def test_bad_inputs_raise_value_errors():
    components = tiny_components(seed=0)
    inputs = dummy_inputs(components)
    with pytest.raises(ValueError, match="audio_embeds"):
        components.denoiser(**dict(inputs, audio_embeds=inputs["audio_embeds"][:, :, :3]))
    with pytest.raises(ValueError, match="audio_embeds"):
        components.denoiser(**dict(inputs, audio_embeds=None))
    too_long = dict(inputs, sample=torch.randn(1, 4, 31, 8, 8), audio_embeds=torch.randn(1, 31, 8, 16),
                    speed_buckets=None)
    with pytest.raises(ValueError, match="positions"):
        components.denoiser(**too_long)
