"""Spline and logistic-mixture coupling transforms, and Flow++'s attention conditioner.

Elementwise maps are checked elementwise: ``dy/dx`` from autograd of ``y.sum()`` is the diagonal
of the Jacobian, so its log must equal the returned log-det value by value.
"""

from __future__ import annotations

import pytest
import torch

from nfgen.flows.attention import gated_attention_net
from nfgen.flows.mixture import LogisticMixtureCDF
from nfgen.flows.spline import RationalQuadraticSpline
from nfgen.flows.transforms import TRANSFORMS, make_transform

BUILDERS = {
    "spline8": lambda: RationalQuadraticSpline(bins=8, bound=3.0),
    "spline3": lambda: RationalQuadraticSpline(bins=3, bound=1.5, min_derivative=1e-2),
    "mixture4": lambda: LogisticMixtureCDF(components=4),
    "mixture1": lambda: LogisticMixtureCDF(components=1),
}
ALL = pytest.mark.parametrize("name", list(BUILDERS))
SPLINES = pytest.mark.parametrize("name", ["spline8", "spline3"])
MIXTURES = pytest.mark.parametrize("name", ["mixture4", "mixture1"])


def _inputs(t, shape=(3, 4, 5), x_scale=3.0, scale=1.0):
    x = torch.randn(shape) * x_scale
    return x, torch.randn(*shape, t.params_per_dim) * scale


def _tol(t) -> float:
    return getattr(t, "inverse_tol", 1e-10)


def test_registered_by_name():
    assert TRANSFORMS["spline"] is RationalQuadraticSpline and TRANSFORMS["logistic_mixture"] is LogisticMixtureCDF
    assert make_transform("spline", bins=4).params_per_dim == 11
    assert make_transform("logistic_mixture", components=32).params_per_dim == 98


@ALL
def test_wrong_param_shape_names_both_shapes(name):
    t = BUILDERS[name]()
    with pytest.raises(ValueError, match=rf"\(2, {t.params_per_dim}\).*got \(2, {t.params_per_dim + 1}\)"):
        t(torch.zeros(2), torch.zeros(2, t.params_per_dim + 1))
    with pytest.raises(ValueError, match=r"values of shape \(3,\)"):
        t.inverse(torch.zeros(3), torch.zeros(2, t.params_per_dim))


@ALL
def test_round_trip(name):
    t = BUILDERS[name]()
    x, p = _inputs(t, scale=1.0)  # x_scale 3: many values outside the spline's bound
    y, ld = t(x, p)
    x_back, ld_inv = t.inverse(y, p)
    assert (x_back - x).abs().max() < _tol(t)
    assert (ld + ld_inv).abs().max() < _tol(t)
    assert (y - x).abs().max() > 0.1  # not passing as an identity


@ALL
def test_round_trip_large_params(name):
    """|raw| up to ~50: everything finite; ``x`` comes back up to the problem's conditioning
    (where dy/dx is tiny, rounding in y alone moves x by eps / (dy/dx)), and its image is ``y``."""
    t = BUILDERS[name]()
    x, p = _inputs(t, shape=(400,), x_scale=5.0, scale=20.0)
    x[:20] = torch.linspace(-1e4, 1e4, 20)  # far outside the spline's bound / the mixture's bulk
    p = p.clamp(-50, 50)
    y, ld = t(x, p)
    x_back, ld_inv = t.inverse(y, p)
    assert all(torch.isfinite(v).all() for v in (y, ld, x_back, ld_inv))
    assert ((t(x_back, p)[0] - y).abs() / (1 + y.abs())).max() < 1e-12
    assert ((x_back - x).abs() * ld.exp().clamp(max=1)).max() < 1e-10


@ALL
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_logdet_matches_autograd(name, scale):
    t = BUILDERS[name]()
    x, p = _inputs(t, scale=scale)
    x.requires_grad_(True)
    y, ld = t(x, p)
    (dy_dx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(dy_dx.log(), ld, atol=1e-8, rtol=0)
    y = y.detach().requires_grad_(True)
    x_back, ld_inv = t.inverse(y, p)
    (dx_dy,) = torch.autograd.grad(x_back.sum(), y)
    torch.testing.assert_close(dx_dy.log(), ld_inv, atol=1e-8, rtol=0)


@ALL
def test_gradients_wrt_params_are_exact(name):
    """Finite differences against autograd for the parameters, both directions (for the mixture's
    inverse this checks the implicit-function gradient through the root finder)."""
    t = BUILDERS[name]()
    x, p = _inputs(t, shape=(3,), scale=1.0)
    y = t(x, p)[0].detach()
    p.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: t(x, q), (p,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda q: t.inverse(y, q), (p,), atol=1e-6, fast_mode=True)


@ALL
def test_zero_params_are_the_identity(name):
    t = BUILDERS[name]()
    x = torch.cat([torch.randn(50) * 3, torch.tensor([-1e3, -3.0, 0.0, 1.5, 3.0, 1e3])])
    p = torch.zeros(*x.shape, t.params_per_dim)
    for out, ld in (t(x, p), t.inverse(x, p)):
        torch.testing.assert_close(out, x, atol=1e-12, rtol=1e-14)
        assert ld.abs().max() < 1e-12


def test_spline_equal_widths_and_heights_with_unit_derivatives_is_the_identity():
    """Every bin then has slope h/w = 1 and unit end derivatives, so the rational-quadratic
    collapses to y = x whatever the (shared) bin sizes: checks the bin formula, not just zeros."""
    t = RationalQuadraticSpline(bins=5, bound=2.0)
    x = torch.linspace(-2.5, 2.5, 101)
    sizes = torch.randn(101, 5) * 3
    p = torch.cat([sizes, sizes, torch.zeros(101, 4)], dim=-1)
    y, ld = t(x, p)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    assert ld.abs().max() < 1e-12
    p[:, -1] = 2.0  # one derivative off 1: no longer the identity near the last inner knot
    assert (t(x, p)[0] - x).abs().max() > 1e-3


def test_mixture_of_identical_standard_logistics_is_the_identity_whatever_the_weights():
    """With all means 0, scales 1 and a = b = 0, F is sigmoid(x) for any mixture weights."""
    t = LogisticMixtureCDF(components=5)
    x = torch.cat([torch.linspace(-40, 40, 81), torch.tensor([-1e4, 1e4])])
    p = torch.zeros(83, t.params_per_dim)
    p[:, :5] = torch.randn(83, 5) * 5
    for out, ld in (t(x, p), t.inverse(x, p)):
        torch.testing.assert_close(out, x, atol=1e-12, rtol=1e-14)
        assert ld.abs().max() < 1e-12


@ALL
def test_strictly_increasing(name):
    t = BUILDERS[name]()
    x = torch.linspace(-8, 8, 4001)
    for scale in (1.0, 5.0):
        for _ in range(4):
            p = (torch.randn(t.params_per_dim) * scale).expand(*x.shape, -1)  # one map, many x
            y, ld = t(x, p)
            assert torch.isfinite(ld).all()
            # With large params the mixture can be flatter than float64 resolves between grid
            # points (slopes ~e^-60 between narrow distant components): there only >= holds.
            assert (y.diff() > 0).all() if scale == 1.0 or "spline" in name else (y.diff() >= 0).all()


@SPLINES
def test_spline_identity_outside_bound_and_c1_at_it(name):
    t = BUILDERS[name]()
    b = t.bound
    x = torch.cat([torch.linspace(b + 1e-9, 50, 30), -torch.linspace(b + 1e-9, 50, 30), torch.tensor([1e6, -1e6])])
    p = torch.randn(*x.shape, t.params_per_dim) * 30
    for out, ld in (t(x, p), t.inverse(x, p)):
        assert torch.equal(out, x) and torch.equal(ld, torch.zeros_like(ld))
    # At the bound itself the spline's end knot meets the tail: value and slope match.
    edge = torch.tensor([b, -b])
    for out, ld in (t(edge, p[:2]), t.inverse(edge, p[:2])):
        assert torch.equal(out, edge) and ld.abs().max() < 1e-12
    # Just inside the bound the slope tends to 1 (boundary derivative 1), so log-det -> 0.
    inner = torch.tensor([b - 1e-9, -b + 1e-9])
    ld = t(inner, torch.randn(2, t.params_per_dim) * 3)[1]
    assert ld.abs().max() < 1e-5


def test_spline_knot_derivatives_respect_the_minimum():
    t = RationalQuadraticSpline(bins=4, bound=1.0, min_derivative=1e-2)
    p = torch.full((1, t.params_per_dim), -50.0)
    _, _, _, _, d = t._spline(p, torch.zeros(1))
    assert d[1:-1].min() >= 1e-2 and d[1:-1].min() < 1.1e-2  # bins on the first axis


@MIXTURES
def test_mixture_bracket_contains_the_root(name):
    """The inverse's bracket [min_k(mu_k + s_k t), max_k(mu_k + s_k t)] holds the true x."""
    t = BUILDERS[name]()
    x, p = _inputs(t, shape=(2000,), x_scale=5.0, scale=3.0)
    m, a, b = t._unpack(p, x)  # components on the first axis
    target = (t(x, p)[0] - b) * torch.exp(-a)
    ends = m.mu + m.log_s.exp() * target
    assert (ends.amin(0) <= x + 1e-12).all() and (x - 1e-12 <= ends.amax(0)).all()


def test_mixture_inverse_tolerance_needs_its_steps():
    """The stated tolerance holds with the default step counts, and fails with too few: the test
    would notice if the solver stopped converging."""
    t = LogisticMixtureCDF(components=8)
    x, p = _inputs(t, shape=(2000,), x_scale=5.0, scale=1.0)
    y = t(x, p)[0]
    assert (t.inverse(y, p)[0] - x).abs().max() < t.inverse_tol
    t.bisect_steps, t.newton_steps = 3, 0
    assert (t.inverse(y, p)[0] - x).abs().max() > t.inverse_tol


@MIXTURES
def test_mixture_float32_extremes(name):
    """float32, |x| up to 1e4 and |raw| up to 50: finite both ways, no saturation of logit(F)
    (the tails keep growing linearly), and the float32 map agrees with float64."""
    t = BUILDERS[name]()
    x = torch.cat([torch.linspace(-1e4, 1e4, 201), torch.randn(200) * 10])
    p = (torch.randn(*x.shape, t.params_per_dim) * 20).clamp(-50, 50)
    y32, ld32 = t(x.float(), p.float())
    x32, ldi32 = t.inverse(y32, p.float())
    assert all(torch.isfinite(v).all() for v in (y32, ld32, x32, ldi32))
    y64, ld64 = t(x, p)
    assert ((y32.double() - y64).abs() / (1 + y64.abs())).max() < 1e-5
    assert ((ld32.double() - ld64).abs() / (1 + ld64.abs())).max() < 1e-5
    # Zero params at x = +-1e4: logit(sigmoid(x)) is x, not inf.
    edge = torch.tensor([-1e4, 1e4])
    y, ld = t(edge.float(), torch.zeros(2, t.params_per_dim))
    assert torch.equal(y, edge.float()) and ld.abs().max() < 1e-6
    # Round trip in float32 with moderate params: within 1e-4 * (1 + |x|).
    xm, pm = _inputs(t, shape=(2000,), x_scale=5.0, scale=1.0)
    back = t.inverse(t(xm.float(), pm.float())[0], pm.float())[0]
    assert ((back.double() - xm).abs() / (1 + xm.abs())).max() < 1e-4


@SPLINES
def test_spline_float32_extremes(name):
    t = BUILDERS[name]()
    x = torch.cat([torch.linspace(-1e4, 1e4, 201), torch.randn(200) * 3]).float()
    p = (torch.randn(*x.shape, t.params_per_dim) * 20).clamp(-50, 50).float()
    y, ld = t(x, p)
    x_back, ld_inv = t.inverse(y, p)
    assert all(torch.isfinite(v).all() for v in (y, ld, x_back, ld_inv))
    assert ((x_back - x).abs() * ld.exp().clamp(max=1)).max() < 1e-4


# Flow++'s conditioner


def _net(c_in=3, c_out=10, **kw):
    return gated_attention_net(hidden=16, blocks=2, heads=4, **kw)(c_in, c_out)


def test_attention_net_shape_and_zero_output_at_init():
    net = _net()
    for size in [(5, 7), (4, 4), (1, 1)]:
        out = net(torch.randn(2, 3, *size))
        assert out.shape == (2, 10, *size) and torch.equal(out, torch.zeros_like(out))


def _randomize_last_layer(net):
    with torch.no_grad():
        net.out.conv.weight.normal_(0, 0.1)
        net.out.conv.bias.normal_(0, 0.1)
    return net


def test_attention_net_does_not_mix_samples():
    net = _randomize_last_layer(_net()).eval()
    x = torch.randn(3, 3, 4, 6)
    x2 = x.clone()
    x2[0] += torch.randn_like(x2[0])
    out, out2 = net(x), net(x2)
    assert (out[0] - out2[0]).abs().max() > 1e-3  # sample 0 did change ...
    torch.testing.assert_close(out[1:], out2[1:], atol=1e-12, rtol=0)  # ... and nothing else did


def test_attention_net_gradient_reaches_every_parameter():
    net = _randomize_last_layer(_net(dropout=0.1)).train()
    (net(torch.randn(2, 3, 4, 4)) ** 2).sum().backward()
    missing = [n for n, q in net.named_parameters() if q.grad is None or q.grad.abs().sum() == 0]
    assert not missing, f"no gradient reaches {missing}"


def test_attention_net_channels_last_and_bf16_autocast():
    net = _randomize_last_layer(_net()).float().eval()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float32)
    ref = net(x)
    torch.testing.assert_close(net(x.to(memory_format=torch.channels_last)), ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x.to(memory_format=torch.channels_last))
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()  # bf16 is coarse, not wrong


def test_attention_net_rejects_heads_not_dividing_hidden():
    with pytest.raises(ValueError, match="divisible"):
        gated_attention_net(hidden=10, blocks=1, heads=4)
