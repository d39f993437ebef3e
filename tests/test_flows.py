"""Every layer and both bodies through the one harness: round trip, log-det vs autograd.

Couplings are a table: every registered transform under every mask, so a new transform is
checked as soon as its module registers it."""

import pytest
import torch
from archs import ARCHS, tiny_body
from flow_harness import (
    check_flow,
    check_inverse_logdet_matches_jacobian,
    check_logdet_matches_jacobian,
    check_round_trip,
    randomize,
    round_trip_tol,
)

from nfgen.flows.actnorm import ActNorm
from nfgen.flows.base import Inverse, Sequential
from nfgen.flows.conditioning import ClassPrior, Guided
from nfgen.flows.conv1x1 import InvConv1x1, InvConv1x1LU, Permute
from nfgen.flows.coupling import ChannelMask, CheckerboardMask, Coupling
from nfgen.flows.glow import build_glow, glow_step
from nfgen.flows.glow_section import GlowConfig
from nfgen.flows.nets import CONDITIONERS, ResidualBlock, glow_net, make_conditioner, mlp, resnet
from nfgen.flows.preprocess import Logit, Shift
from nfgen.flows.priors import LearnedGaussian, SplitPrior
from nfgen.flows.reshape import Squeeze
from nfgen.flows.tarflow import AutoregressiveBlock, Patchify
from nfgen.flows.transforms import TRANSFORMS, make_transform
from nfgen.flows.vector import OnVectors, Planar, Radial

C, H, W = 4, 4, 4

LAYERS = {
    "actnorm": lambda: ActNorm(C),
    "conv1x1": lambda: InvConv1x1(C),
    "conv1x1_lu": lambda: InvConv1x1LU(C),
    "reverse": lambda: Permute(C, "reverse"),
    "shuffle": lambda: Permute(C, "shuffle"),
    "squeeze": lambda: Squeeze(),
    "squeeze_channels_last": lambda: Squeeze(channels_last=True),
    "shift": lambda: Shift(),
    "learned_top": lambda: LearnedGaussian((C, H, W)),
    "split_prior": lambda: SplitPrior(C),
    "glow_step_additive": lambda: glow_step(C, glow_net(8), "additive", "conv1x1"),
    "glow_step_affine": lambda: glow_step(C, glow_net(8), "affine", "conv1x1_lu"),
    "inverse_of_step": lambda: Inverse(glow_step(C, glow_net(8))),
    "sequential": lambda: Sequential(ActNorm(C), Squeeze(), InvConv1x1(4 * C)),
    "patchify": lambda: Patchify(2),
    "tarflow_block": lambda: AutoregressiveBlock(C, (H, W), width=16, layers=2, heads=2),
    "tarflow_block_reversed": lambda: AutoregressiveBlock(C, (H, W), width=16, layers=1, heads=4, reverse=True),
    "tarflow_block_additive": lambda: AutoregressiveBlock(C, (H, W), width=8, layers=1, heads=1, scale="additive"),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer(name, device):
    check_flow(randomize(LAYERS[name]()).to(device), torch.randn(2, C, H, W, device=device))


VECTORS = {  # flows over [B, D] vectors (nfgen density2d): (factory, D)
    "planar": (lambda: Planar(2), 2),
    "planar_5d": (lambda: Planar(5), 5),
    "radial": (lambda: Radial(2), 2),
    "radial_3d": (lambda: Radial(3), 3),
    "planar_radial_stack": (lambda: Sequential(Planar(2), Radial(2), Inverse(Planar(2))), 2),
    "couplings_on_vectors": (lambda: OnVectors(Sequential(glow_step(2, mlp(8, 1), "affine", "conv1x1_lu"),
                                                          glow_step(2, mlp(8, 1), "spline", "reverse"))), 2),
    "couplings_on_vectors_3d": (lambda: OnVectors(glow_step(3, mlp(8, 1), "logistic_mixture", "shuffle")), 3),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_layer(name, device):
    make, dim = VECTORS[name]
    check_flow(randomize(make()).to(device), torch.randn(3, dim, device=device))


MASKS = {
    "channel0": lambda c: ChannelMask(c, parity=0),
    "channel1": lambda c: ChannelMask(c, parity=1),
    "checkerboard0": lambda c: CheckerboardMask(c, (H, W), parity=0),
    "checkerboard1": lambda c: CheckerboardMask(c, (H, W), parity=1),
}


@pytest.mark.parametrize("channels", [4, 3])  # 3: the two halves of a channel mask differ in size
@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_coupling(transform, mask, channels, device):
    net = resnet(8, 1) if mask.startswith("checkerboard") else glow_net(8)
    coupling = randomize(Coupling(MASKS[mask](channels), net, make_transform(transform))).to(device)
    check_flow(coupling, torch.randn(2, channels, H, W, device=device))


@pytest.mark.parametrize("mask", ["channel0", "checkerboard1"])
def test_conditional_coupling(mask):
    # The context reaches the net as extra channels; memory saving passes its gradient on too.
    coupling = randomize(Coupling(MASKS[mask](C), glow_net(8), "affine", context_channels=5))
    check_flow(coupling, torch.randn(2, C, H, W), context=torch.randn(2, 5, H, W))


def test_context_passes_through_a_sequential():
    step = Sequential(ActNorm(C), Coupling(ChannelMask(C), glow_net(8), "affine", context_channels=2), Permute(C))
    check_flow(randomize(step), torch.randn(2, C, H, W), context=torch.randn(2, 2, H, W))


K = 5  # the size of a class embedding
CONDITIONAL = {  # flows that see a class embedding [B, K]: a new conditional flow is one line here
    "coupling_channel": lambda: Coupling(ChannelMask(C), glow_net(8), "affine", context_channels=K),
    "coupling_checkerboard": lambda: Coupling(CheckerboardMask(C, (H, W)), resnet(8, 1), "spline", context_channels=K),
    "split_prior": lambda: SplitPrior(C, K),
    "class_prior": lambda: ClassPrior(C, K),
    "tarflow_block": lambda: AutoregressiveBlock(C, (H, W), width=16, layers=1, heads=2, context_dim=K),
    # Every registered architecture's body, tiny, seeing the class.
    **{arch: (lambda arch=arch: tiny_body(arch, (C, H, W), depth=1, context_dim=K)) for arch in ARCHS},
}


def _out(flow, x, context):
    z = flow(x, context)[0]
    return torch.cat([t.flatten(1) for t in z], 1) if isinstance(z, list) else z


@pytest.mark.parametrize("name", sorted(CONDITIONAL))
def test_conditional_flow(name, device):
    flow = randomize(CONDITIONAL[name]()).to(device)
    x, context = torch.randn(2, C, H, W, device=device), torch.randn(2, K, device=device)
    check_flow(flow, x, context)
    # The class matters: another embedding maps the same input elsewhere.
    assert (_out(flow, x, context) - _out(flow, x, torch.randn(2, K, device=device))).abs().max() > 1e-3


# Found when this list began to read the registry (Flow++ joined it): under guidance weight 1.5 a
# logistic-mixture checkerboard coupling of the tiny Flow++ maps far into the transform's tails
# (|y| ~ 60), where its numerical inverse comes back 8e-4 off, not 1e-10. Strict: the mark must
# go when the inverse is fixed.
GUIDED_INVERSE_OFF = {"flowpp": "logistic-mixture inverse 8e-4 off under guidance in the tails (a known defect)"}


@pytest.mark.parametrize("name", ["coupling_channel", "class_prior", "tarflow_block", *[
    pytest.param(arch, marks=pytest.mark.xfail(strict=True, reason=GUIDED_INVERSE_OFF[arch]))
    if arch in GUIDED_INVERSE_OFF else arch for arch in ARCHS]])
def test_guided_flow_is_a_bijection(name):
    # Guidance changes the map, not its exactness: the guided forward and inverse are one
    # bijection with the right log-det, also annealed over tokens.
    flow = randomize(CONDITIONAL[name]())
    guided = Guided(torch.randn(2, K), torch.randn(2, K), weight=1.5, annealed=True)
    x = torch.randn(2, C, H, W)
    check_round_trip(flow, x, guided, round_trip_tol(flow))
    check_logdet_matches_jacobian(flow, x, guided)
    check_inverse_logdet_matches_jacobian(flow, x, guided)
    plain = Guided(guided.cond, guided.null, weight=0.0)
    assert torch.equal(_out(flow, x, plain), _out(flow, x, guided.cond))  # weight 0: the class alone


@pytest.mark.parametrize("name", sorted(CONDITIONERS))
def test_every_conditioner_starts_as_zero(name):
    net = make_conditioner(name, hidden=8, blocks=1)(3, 6)
    assert torch.equal(net(torch.randn(2, 3, H, W)), torch.zeros(2, 6, H, W))


def test_named_choices_fail_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown conditioner 'unet'; expected one of .*glow.*resnet"):
        make_conditioner("unet", hidden=8, blocks=1)
    with pytest.raises(ValueError, match="conditioner 'glow' has no option 'heads'"):
        make_conditioner("glow", hidden=8, blocks=1, heads=2)
    with pytest.raises(ValueError, match="unknown coupling transform 'cubic'"):
        make_transform("cubic")


def test_logit_preprocessing():
    check_flow(Logit(0.05), torch.rand(2, 2, 3, 3))


BODIES = {  # every registered architecture's builder, tiny (the registry's), and variants of some
    **{arch: (lambda shape, arch=arch: tiny_body(arch, shape)) for arch in ARCHS},
    "flowpp_channel_first": lambda shape: tiny_body("flowpp", shape, channel=(int(shape[0] > 1), 1)),
    "flowpp_split": lambda shape: tiny_body("flowpp", (2 * shape[0], *shape[1:]), channel=(0, 1), checkerboard=(2, 1),
                                            split=True, coupling="spline", coupling_options={}),
    "tarflow_deep_last": lambda shape: tiny_body("tarflow", shape, depth=3, width=16, layers=(2, 1, 1)),
    "tarflow_patch1": lambda shape: tiny_body("tarflow", shape, patch=1),
    "tarflow_additive": lambda shape: tiny_body("tarflow", shape, scale="additive"),
}


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 4, 4), (2, 8, 4)])
@pytest.mark.parametrize("arch", sorted(BODIES))
def test_body(arch, shape, device):
    body = randomize(BODIES[arch](shape)).to(device)
    check_flow(body, torch.randn(2, *body.input_shape, device=device))
    assert sum(torch.Size(s).numel() for s in body.latent_shapes) == torch.Size(body.input_shape).numel()


def test_glow_with_standard_priors_and_permutations():
    body = build_glow((1, 4, 4), GlowConfig(levels=2, steps=1, hidden=4, coupling="additive",
                                            permutation="shuffle", split_prior="standard", learn_top=False))
    check_flow(randomize(body), torch.randn(2, 1, 4, 4))


def test_bodies_take_any_conditioner_by_name():
    body = build_glow((1, 4, 4), GlowConfig(levels=2, steps=1, hidden=4, conditioner="resnet", blocks=1))
    assert isinstance(body.levels[0].flow.flows[1].flows[2].net[2], ResidualBlock)
    check_flow(randomize(body), torch.randn(2, 1, 4, 4))


def test_actnorm_initialises_once_from_data():
    layer = ActNorm(3)
    x = 5 + 3 * torch.randn(64, 3, 4, 4)
    z, _ = layer(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-10)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-6)
    fresh = ActNorm(3)
    fresh.load_state_dict(layer.state_dict())
    fresh(torch.randn(8, 3, 4, 4))  # a different batch must not re-initialise
    assert torch.equal(fresh.loc, layer.loc) and torch.equal(fresh.log_scale, layer.log_scale)


def test_lu_and_plain_conv_agree():
    lu = randomize(InvConv1x1LU(6))
    plain = InvConv1x1(6)
    with torch.no_grad():
        plain.weight.copy_(lu.matrix())
    x = torch.randn(3, 6, 2, 2)
    z1, ld1 = lu(x)
    z2, ld2 = plain(x)
    assert torch.allclose(z1, z2, atol=1e-12) and torch.allclose(ld1, ld2, atol=1e-10)


def test_logdet_changes_sign_under_inverse():
    step = randomize(glow_step(C, glow_net(8), "affine", "conv1x1"))
    x = torch.randn(2, C, H, W)
    _, ld = step(x)
    assert ld.abs().min() > 1e-3  # a non-trivial log-det, so the sign really is tested
    _, ld_back = step.inverse(step(x)[0])
    assert torch.allclose(ld_back, -ld, atol=1e-10)
    # Inverse(step) at x is step's inverse at x: its log-det is minus step's at the point it maps to.
    y, ld_inv = Inverse(step)(x)
    _, ld_at_y = step(y)
    assert torch.allclose(ld_inv, -ld_at_y, atol=1e-10) and not torch.allclose(ld_inv, -ld, atol=1e-3)


def test_checkerboard_state_dicts_from_before_the_mask_objects_load():
    coupling = Coupling(CheckerboardMask(C, (H, W)), resnet(8, 1))
    old = {**coupling.state_dict(), "mask": torch.ones(1, 1, H, W)}  # as a pre-refactor checkpoint held it
    coupling.load_state_dict(old)  # strict: the stored mask is dropped, the pattern is rebuilt


def test_wrong_shape_names_both_shapes():
    body = build_glow((1, 4, 4), GlowConfig(levels=2, steps=1, hidden=4))
    with pytest.raises(ValueError, match=r"expected shape \[B, 1, 4, 4\], got \[2, 1, 8, 8\]"):
        body(torch.randn(2, 1, 8, 8))
