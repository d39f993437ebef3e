"""Every layer and both bodies through the one harness: round trip, log-det vs autograd."""

import pytest
import torch
from flow_harness import check_flow, randomize

from nfgen.flows.actnorm import ActNorm
from nfgen.flows.base import Flow, Inverse, Sequential
from nfgen.flows.conv1x1 import InvConv1x1, InvConv1x1LU, Permute
from nfgen.flows.coupling import Coupling
from nfgen.flows.glow import build_glow, glow_step
from nfgen.flows.nets import glow_net, resnet
from nfgen.flows.preprocess import Logit, Shift
from nfgen.flows.realnvp import build_realnvp
from nfgen.flows.reshape import Squeeze
from nfgen.priors import LearnedGaussian, split_prior

C, H, W = 4, 4, 4


class WithContext(Flow):
    """A conditional coupling with its context fixed, so the harness sees a plain flow."""

    def __init__(self, coupling, context):
        super().__init__()
        self.coupling, self.context = coupling, context

    def forward(self, x):
        return self.coupling(x, context=self.context.expand(x.shape[0], -1, -1, -1))

    def inverse(self, z):
        return self.coupling.inverse(z, context=self.context.expand(z.shape[0], -1, -1, -1))


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
    "split_prior": lambda: split_prior(C),
    "glow_step_additive": lambda: glow_step(C, 8, "additive", "conv1x1"),
    "glow_step_affine": lambda: glow_step(C, 8, "affine", "conv1x1_lu"),
    "inverse_of_step": lambda: Inverse(glow_step(C, 8, "affine", "conv1x1_lu")),
    "sequential": lambda: Sequential(ActNorm(C), Squeeze(), InvConv1x1(4 * C)),
}
for mask in ("channel", "checkerboard"):
    for transform in ("affine", "additive"):
        for parity in (0, 1):
            LAYERS[f"coupling_{mask}_{transform}_{parity}"] = (
                lambda m=mask, t=transform, p=parity: Coupling(
                    C, resnet(8, 1) if m == "checkerboard" else glow_net(8), mask=m, parity=p,
                    transform=t, size=(H, W)))
LAYERS["coupling_odd_channels"] = lambda: Coupling(3, glow_net(8), mask="channel", parity=1)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer(name):
    flow = randomize(LAYERS[name]())
    channels = 3 if name == "coupling_odd_channels" else C
    check_flow(flow, torch.randn(2, channels, H, W))


def test_conditional_coupling():
    coupling = randomize(Coupling(C, glow_net(8), mask="checkerboard", context_channels=5, size=(H, W)))
    check_flow(WithContext(coupling, torch.randn(1, 5, H, W)), torch.randn(2, C, H, W))


def test_logit_preprocessing():
    check_flow(Logit(0.05), torch.rand(2, 2, 3, 3))


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 4, 4), (2, 8, 4)])
@pytest.mark.parametrize("arch", ["glow", "realnvp"])
def test_body(arch, shape):
    if arch == "glow":
        body = build_glow(shape, levels=2, steps=2, hidden=8)
    else:
        body = build_realnvp(shape, levels=2, steps=2, hidden=8, blocks=1)
    check_flow(randomize(body), torch.randn(2, *shape))
    assert sum(torch.Size(s).numel() for s in body.latent_shapes) == torch.Size(shape).numel()


def test_glow_with_standard_priors_and_permutations():
    body = build_glow((1, 4, 4), levels=2, steps=1, hidden=4, coupling="additive",
                      permutation="shuffle", split_prior="standard", learn_top=False)
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
    step = randomize(glow_step(C, 8, "affine", "conv1x1"))
    x = torch.randn(2, C, H, W)
    _, ld = step(x)
    _, ld_inv = Inverse(step)(x)
    assert ld.abs().min() > 1e-3  # a non-trivial log-det, so the sign really is tested
    _, ld_back = step.inverse(step(x)[0])
    assert torch.allclose(ld_back, -ld, atol=1e-10)
    assert not torch.allclose(ld_inv, ld)


def test_wrong_shape_names_both_shapes():
    body = build_glow((1, 4, 4), levels=2, steps=1, hidden=4)
    with pytest.raises(ValueError, match=r"expected shape \[B, 1, 4, 4\], got \[2, 1, 8, 8\]"):
        body(torch.randn(2, 1, 8, 8))
