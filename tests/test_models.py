"""Specification of mmlib.models: Multi-Unet, fusion baselines, progressive nets, fine-tuning helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlib.errors import MMLibError
from mmlib.models import (
    LFUNet,
    MAFUNet,
    MultiUNet,
    ProgressiveUNet,
    assign_new_modalities,
    build_model,
    unet_widths,
    widen_first_layer,
)

# 32^3 is the smallest grid the network takes: the avg pool at 1/8 needs 3 voxels per axis.
GRID = (32, 32, 32)
SMALL = 0.25  # widths 4, 8, 16, 32, 64: for checks of structure
TINY = 0.125  # widths 2, 4, 8, 16, 32: for forward and backward passes
FIVE_DB_CHANNELS = ["FLAIR", "T1", "T1c", "T2", "PD", "SWI"]

#: Multi-Unet parameters at width 1 for the paper's six channels (formula and module agree).
REFERENCE_PARAMETERS_6CH = 8_900_930


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One thread: the test machine's cores are shared, and extra threads only add contention here.
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _x(batch: int = 2, channels: int = 3) -> torch.Tensor:
    return torch.randn(batch, channels, *GRID)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- Multi-Unet -------------------------------------------------------------------------------

def test_multiunet_maps_input_grid_to_logits_of_out_channels():
    model = MultiUNet(2, out_channels=2, width=TINY)
    assert model(_x(2, 2)).shape == (2, 2, *GRID)


def test_multiunet_accepts_more_input_channels_than_its_first_width():
    # The residual then covers the first w0 input channels only (w0 = 2 here).
    assert MultiUNet(3, width=TINY)(_x(1)).shape == (1, 1, *GRID)


def test_multiunet_parameter_count_at_width_1_equals_the_formula():
    model = MultiUNet(6)
    count = _n_params(model)
    print(f"MultiUNet(6 channels, width 1): {count:,} parameters")
    assert count == MultiUNet.expected_parameter_count(6, 1, 1.0) == REFERENCE_PARAMETERS_6CH


def test_multiunet_parameter_count_at_other_widths_equals_the_formula():
    for width in (0.5, SMALL):
        assert _n_params(MultiUNet(2, 1, width)) == MultiUNet.expected_parameter_count(2, 1, width)


def test_width_1_gives_the_reference_widths_and_half_width_halves_them():
    assert unet_widths(1.0) == (16, 32, 64, 128, 256)
    model = MultiUNet(4, width=0.5)
    assert [unit.sub2.conv.out_channels for unit in model.encoder.units] == [8, 16, 32, 64, 128]


def test_decoder_stages_take_concatenated_widths_and_reduce_them():
    model = MultiUNet(6)
    keeps = [(s.keep.conv.in_channels, s.keep.conv.out_channels) for s in model.decoder.stages]
    reduces = [s.reduce.conv.out_channels for s in model.decoder.stages[:3]]
    assert keeps == [(384, 384), (128, 128), (64, 64), (32, 32)]
    assert reduces == [64, 32, 16]
    assert model.decoder.head.conv.in_channels == 32 and model.decoder.head.conv.out_channels == 1


def test_residual_avg_pool_is_added_to_the_first_k_channels():
    unit = MultiUNet(3, width=SMALL).encoder.units[0].eval()
    x = torch.randn(1, 3, 8, 8, 8)
    convs = unit.sub2(unit.sub1(x))
    pooled = F.avg_pool3d(x, kernel_size=3, stride=2, padding=1)
    out = unit(x)
    assert torch.allclose(out[:, :3], convs[:, :3] + pooled)
    assert torch.equal(out[:, 3:], convs[:, 3:])


def test_bottleneck_unit_has_stride_1_and_an_identity_residual():
    unit = MultiUNet(1, width=SMALL).encoder.units[4].eval()
    x = torch.randn(1, 32, 2, 2, 2)
    out = unit(x)
    assert out.shape == (1, 64, 2, 2, 2)
    assert torch.allclose(out[:, :32], unit.sub2(unit.sub1(x))[:, :32] + x)


def test_conv_blocks_use_dropout_02_one_prelu_slope_and_instance_norm_without_affine():
    modules = list(MultiUNet(2, width=SMALL).modules())
    dropouts = [m for m in modules if isinstance(m, nn.Dropout)]
    prelus = [m for m in modules if isinstance(m, nn.PReLU)]
    norms = [m for m in modules if isinstance(m, nn.InstanceNorm3d)]
    assert len(dropouts) == len(prelus) == len(norms) == 17  # 10 encoder + 7 decoder conv blocks
    assert all(d.p == 0.2 for d in dropouts)
    assert all(p.num_parameters == 1 for p in prelus)
    assert all(not n.affine for n in norms)


def test_last_conv_is_a_plain_conv_with_bias():
    head = MultiUNet(2, width=SMALL).decoder.head
    assert not any(isinstance(m, (nn.InstanceNorm3d, nn.Dropout, nn.PReLU)) for m in head.modules())
    assert head.conv.bias is not None


def test_forward_features_returns_activations_before_strided_convs_and_upsamplings():
    model = MultiUNet(2, width=TINY).eval()
    x = _x(1, 2)
    out, taps = model.forward_features(x)
    shapes = [tuple(t.shape[1:]) for t in taps]
    assert shapes == [(2, 32, 32, 32), (2, 16, 16, 16), (4, 8, 8, 8), (8, 4, 4, 4),
                      (48, 2, 2, 2), (16, 4, 4, 4), (8, 8, 8, 8), (4, 16, 16, 16)]
    assert [s[0] for s in shapes] == list(model.tap_channels)
    assert torch.equal(out, model(x))


def test_multiunet_ignores_present():
    model = MultiUNet(2, width=TINY).eval()
    x = _x(1, 2)
    assert torch.equal(model(x), model(x, torch.tensor([[True, False]])))


# --- Fusion baselines -------------------------------------------------------------------------

FUSION = [LFUNet, MAFUNet]


@pytest.mark.parametrize("cls", FUSION)
def test_fusion_net_maps_input_grid_to_logits(cls):
    assert cls(3, 1, TINY)(_x(1)).shape == (1, 1, *GRID)


@pytest.mark.parametrize("cls", FUSION)
def test_absent_modality_carries_no_weight_whatever_its_values(cls):
    model = cls(3, 1, TINY).eval()
    x = _x(1)
    present = torch.tensor([[True, False, True]])
    noisy = x.clone()
    noisy[:, 1] = 100 * torch.randn(GRID)
    with torch.no_grad():
        assert torch.allclose(model(x, present), model(noisy, present))


@pytest.mark.parametrize("cls", FUSION)
def test_presence_is_inferred_from_all_zero_channels(cls):
    model = cls(3, 1, TINY).eval()
    x = _x(2)
    x[0, 1] = 0
    present = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        assert torch.allclose(model(x), model(x, present))


@pytest.mark.parametrize("cls", FUSION)
def test_one_present_modality_gives_finite_outputs_and_gradients(cls):
    model = cls(3, 1, TINY).train()
    x = _x(2)
    x[:, 1:] = 0
    out = model(x)
    out.mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("cls", FUSION)
def test_sample_with_no_modality_present_gives_finite_output(cls):
    model = cls(3, 1, TINY).train()
    x = _x(2)
    x[1] = 0
    out = model(x)
    out.mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- Progressive nets -------------------------------------------------------------------------

def test_progressive_net_outputs_column_2_logits_of_input_grid():
    assert ProgressiveUNet(MultiUNet(2, width=TINY))(_x(1, 2)).shape == (1, 1, *GRID)


def test_progressive_column_1_stays_frozen_and_column_2_learns():
    net = ProgressiveUNet(MultiUNet(2, width=TINY)).train()
    before1 = [p.clone() for p in net.column1.parameters()]
    before2 = [p.clone() for p in net.column2.parameters()]
    net(_x(1, 2)).mean().backward()
    # A plain gradient step on every parameter that got a gradient (torch.optim's first use
    # costs seconds of imports).
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p.sub_(1e-2 * p.grad)
    assert all(p.grad is None for p in net.column1.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before1, net.column1.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before2, net.column2.parameters()))


def test_progressive_column_1_stays_in_eval_mode_when_training():
    net = ProgressiveUNet(MultiUNet(3, width=SMALL)).train()
    assert net.column2.training
    assert not any(m.training for m in net.column1.modules())
    assert not any(p.requires_grad for p in net.column1.parameters())


def test_progressive_column_2_takes_column_1_activations():
    net = ProgressiveUNet(MultiUNet(2, width=TINY)).eval()
    x = _x(1, 2)
    before = net(x)
    with torch.no_grad():
        net.column1.encoder.units[1].sub2.conv.weight.mul_(2)
    assert not torch.allclose(before, net(x))


def test_progressive_net_does_not_freeze_the_callers_model():
    pretrained = MultiUNet(3, width=SMALL)
    ProgressiveUNet(pretrained)
    assert all(p.requires_grad for p in pretrained.parameters())


# --- Fine-tuning helpers (Appendix B) ---------------------------------------------------------

def test_isles_dwi_takes_the_pd_channel():
    mapping = assign_new_modalities(FIVE_DB_CHANNELS, ["FLAIR", "T1", "T2", "DWI"])
    assert mapping == {"FLAIR": 0, "T1": 1, "T2": 3, "DWI": 4}


def test_tbi_swi_takes_the_pd_channel_when_pretrained_without_tbi():
    mapping = assign_new_modalities(["FLAIR", "T1", "T1c", "T2", "PD"], ["FLAIR", "T1", "T2", "SWI"])
    assert mapping == {"FLAIR": 0, "T1": 1, "T2": 3, "SWI": 4}


def test_known_modalities_keep_their_own_channel_and_aliases_are_understood():
    mapping = assign_new_modalities(FIVE_DB_CHANNELS, ["t1gd", "swi"])
    assert mapping == {"T1c": 2, "SWI": 5}


def test_more_new_modalities_than_free_channels_is_an_error():
    with pytest.raises(MMLibError, match="free channel"):
        assign_new_modalities(["FLAIR", "T1"], ["FLAIR", "T1", "DWI"])


def test_overflow_gets_channels_past_the_end_when_widening_is_allowed():
    mapping = assign_new_modalities(["FLAIR", "T1", "PD"], ["FLAIR", "T1", "DWI", "SWI"], allow_widening=True)
    assert mapping == {"FLAIR": 0, "T1": 1, "DWI": 2, "SWI": 3}


def test_widened_model_gives_the_same_output_when_extra_channels_are_zero():
    model = MultiUNet(2, width=TINY).eval()
    wide = widen_first_layer(model, 2, seed=1).eval()
    x = _x(1, 2)
    with torch.no_grad():
        assert torch.allclose(model(x), wide(torch.cat([x, torch.zeros_like(x)], dim=1)), atol=1e-5)


def test_widening_keeps_old_filters_and_seeds_new_ones():
    model = MultiUNet(2, width=SMALL)
    first = model.encoder.units[0].sub1.conv.weight
    wide_a = widen_first_layer(model, 1, seed=3).encoder.units[0].sub1.conv.weight
    wide_b = widen_first_layer(model, 1, seed=3).encoder.units[0].sub1.conv.weight
    assert wide_a.shape[1] == 3 and first.shape[1] == 2
    assert torch.equal(wide_a[:, :2], first)
    assert torch.equal(wide_a, wide_b) and wide_a[:, 2:].abs().sum() > 0


# --- Factory ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch, cls", [("multiunet", MultiUNet), ("LFUNet", LFUNet), ("mafunet", MAFUNet)])
def test_build_model_builds_each_architecture(arch, cls):
    model = build_model(arch, 3, SMALL)
    assert isinstance(model, cls) and model.in_channels == 3


def test_build_model_names_the_known_architectures_for_an_unknown_one():
    with pytest.raises(MMLibError, match="multiunet"):
        build_model("transunet", 3, SMALL)
