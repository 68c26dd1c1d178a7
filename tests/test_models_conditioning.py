"""Every conditioning path of the denoiser is real: portrait, reference drop, audio, frames, face mask, speed.

The tiny models have their zero-initialised layers given small random weights (``tiny_components(live=True)``),
otherwise a disconnected path and a fresh zero-init layer would look the same.
"""

from __future__ import annotations

import pytest
import torch

from emo_stream.models import ReferenceBank, tiny_components
from emo_stream.models import configs as named
from emo_stream.models.factory import build_components, liven_zero_init
from tests.test_models import dummy_inputs


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, atol=1e-6)


@pytest.fixture(scope="module", params=["inline", "separate"])
def components(request):
    return tiny_components(seed=0, audio_mode=request.param)


@torch.no_grad()
def test_a_different_portrait_changes_the_output(components):
    inputs = dummy_inputs(components)
    other = components.reference_net.encode_portrait(torch.randn(1, 4, 8, 8),
                                                     inputs["encoder_hidden_states"]
                                                     if components.reference_net.config.cross_attention_dim else None)
    base = components.denoiser(**inputs).sample
    other_bank = other.with_motion(inputs["reference_bank"].motion)
    assert changed(base, components.denoiser(**dict(inputs, reference_bank=other_bank)).sample)


@torch.no_grad()
def test_dropping_the_reference_changes_the_output_and_masked_rows_equal_no_reference(components):
    inputs = dummy_inputs(components)
    bank = inputs["reference_bank"].with_motion(None)
    with_ref = components.denoiser(**dict(inputs, reference_bank=bank)).sample
    without = components.denoiser(**dict(inputs, reference_bank=None)).sample
    assert changed(with_ref, without)
    # The CFG batch: row 0 reads the reference, row 1 (mask False) must equal a run without it.
    batch = {k: (torch.cat([v, v]) if torch.is_tensor(v) else v) for k, v in inputs.items()}
    batch.update(reference_bank=bank, reference_mask=torch.tensor([True, False]))
    both = components.denoiser(**batch).sample
    torch.testing.assert_close(both[0:1], with_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(both[1:2], without, rtol=0, atol=1e-5)


@torch.no_grad()
def test_the_reference_bank_is_computed_once_and_reused(components):
    """Two windows with one cached bank equal two windows with a freshly computed bank each."""
    inputs = dummy_inputs(components)
    portrait = torch.randn(1, 4, 8, 8)
    tokens = inputs["encoder_hidden_states"] if components.reference_net.config.cross_attention_dim else None
    cached = components.reference_net.encode_portrait(portrait, tokens)
    for seed in (1, 2):
        window = dict(inputs, sample=torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(seed)),
                      reference_bank=cached)
        fresh = dict(window, reference_bank=components.reference_net.encode_portrait(portrait, tokens))
        torch.testing.assert_close(components.denoiser(**window).sample, components.denoiser(**fresh).sample,
                                   rtol=0, atol=0)


@torch.no_grad()
def test_the_output_depends_on_the_audio(components):
    inputs = dummy_inputs(components)
    base = components.denoiser(**inputs).sample
    other = dict(inputs, audio_embeds=torch.randn_like(inputs["audio_embeds"]))
    assert changed(base, components.denoiser(**other).sample)
    # Audio of frame 1 only changes frame 1 when nothing mixes frames: checked in the temporal test below.


@pytest.mark.parametrize("temporal", [True, False])
@torch.no_grad()
def test_temporal_layers_mix_frames(temporal):
    """Perturbing frame 0's input changes frame 2's output only when the temporal layers are on."""
    configs = named.tiny()
    configs["denoiser"].update(use_motion_module=temporal, num_speed_buckets=3 if temporal else 0,
                               speed_embedding_dim=16 if temporal else 0)
    components = build_components(configs, tiny_components().settings, seed=0)
    liven_zero_init(components)
    inputs = dummy_inputs(components, frames=3)
    inputs.update(speed_buckets=None, reference_bank=inputs["reference_bank"].with_motion(None))
    base = components.denoiser(**inputs).sample
    sample = inputs["sample"].clone()
    sample[:, :, 0] += torch.randn_like(sample[:, :, 0])
    audio = inputs["audio_embeds"].clone()
    audio[:, 0] += 1.0
    for perturbed in (dict(inputs, sample=sample), dict(inputs, audio_embeds=audio)):
        out = components.denoiser(**perturbed).sample
        assert changed(out[:, :, 0], base[:, :, 0])
        assert changed(out[:, :, 2], base[:, :, 2]) == temporal


@torch.no_grad()
def test_motion_frames_reach_the_clip_through_the_temporal_layers(components):
    inputs = dummy_inputs(components)
    bank: ReferenceBank = inputs["reference_bank"]
    tokens = inputs["encoder_hidden_states"] if components.reference_net.config.cross_attention_dim else None
    other = components.reference_net.encode_motion_frames(torch.randn(1, 2, 4, 8, 8), tokens)
    base = components.denoiser(**inputs).sample
    assert changed(base, components.denoiser(**dict(inputs, reference_bank=bank.with_motion(other))).sample)
    assert changed(base, components.denoiser(**dict(inputs, reference_bank=bank.with_motion(None))).sample)


@torch.no_grad()
def test_the_face_mask_moves_where_change_happens():
    """A face box in the top-left changes the top-left of the output most; a bottom-right box the bottom-right."""
    components = tiny_components(seed=0)
    # The fresh locator is a no-op by design (zero conv_out); give it weights that matter.
    torch.nn.init.normal_(components.face_locator.conv_out.weight, std=0.3)
    inputs = dummy_inputs(components)
    empty = torch.zeros(1, 1, 64, 64)

    def output(mask):
        features = components.face_locator(mask).features
        return components.denoiser(**dict(inputs, face_features=features)).sample

    base = output(empty)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    centroids = []
    for top, left in ((0, 0), (40, 40)):
        mask = empty.clone()
        mask[..., top:top + 24, left:left + 24] = 1.0
        change = (output(mask) - base).abs().mean(dim=(0, 1, 2))  # [8, 8] latent map
        assert change.sum() > 0
        centroids.append(torch.stack([(change * ys).sum(), (change * xs).sum()]) / change.sum())
    assert torch.all(centroids[1] - centroids[0] > 0.5)


@torch.no_grad()
def test_speed_buckets_change_the_output_once_trained_and_not_before():
    live = tiny_components(seed=0)
    fresh = tiny_components(seed=0, live=False)
    for components, expect in ((live, True), (fresh, False)):
        inputs = dummy_inputs(components)
        base = components.denoiser(**inputs).sample
        other = components.denoiser(**dict(inputs, speed_buckets=-inputs["speed_buckets"])).sample
        assert changed(base, other) == expect


@torch.no_grad()
def test_separate_audio_slot_respects_the_region_masks():
    """Hallo's audio modules only act inside their regions: with all masks empty, the audio cannot matter."""
    components = tiny_components(seed=0, audio_mode="separate")
    inputs = dummy_inputs(components)
    empty = torch.zeros(1, 3, 8, 8)
    a = components.denoiser(**dict(inputs, region_masks=empty)).sample
    b = components.denoiser(**dict(inputs, region_masks=empty, audio_embeds=torch.randn_like(inputs["audio_embeds"])))
    torch.testing.assert_close(a, b.sample, rtol=0, atol=1e-6)
    full = components.denoiser(**inputs).sample
    assert changed(a, full)


@torch.no_grad()
def test_a_batch_of_sessions_equals_one_by_one(components):
    """Two portraits/clips in one call (``ReferenceBank.cat``) give what two separate calls give."""
    first, second = dummy_inputs(components, seed=1), dummy_inputs(components, seed=2)
    batched = {}
    for key, value in first.items():
        if key == "reference_bank":
            batched[key] = ReferenceBank.cat([value, second[key]])
        elif torch.is_tensor(value):
            batched[key] = torch.cat([value, second[key]])
        else:
            batched[key] = value
    out = components.denoiser(**batched).sample
    torch.testing.assert_close(out[0:1], components.denoiser(**first).sample, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1:2], components.denoiser(**second).sample, rtol=0, atol=1e-5)
