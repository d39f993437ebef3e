"""TarFlow's own properties; the shared harness (round trips, log-dets against autograd, memory
saving) covers its blocks and bodies in test_flows.py, and every CLI verb in test_cli.py."""

import pytest
import torch
from archs import tiny_model
from flow_harness import randomize

import nfgen
from nfgen.config.schema import ConfigError, config_from_dict
from nfgen.flows.tarflow import AutoregressiveBlock, build_tarflow, set_kv_cache
from nfgen.flows.tarflow_section import TarflowConfig


def _model(**section):
    model = nfgen.build_model({"model": tiny_model("tarflow", (1, 8, 8), depth=3, width=16, **section)})
    return randomize(model, 0.2).eval()


def _sample(model, kv_cache, seed=5):
    set_kv_cache(model, kv_cache)
    return model.sample_continuous(6, 1.0, torch.Generator().manual_seed(seed))


def test_kv_cached_sampling_equals_recomputing_every_prefix():
    model = _model()
    cached, recomputed = _sample(model, True), _sample(model, False)
    assert (cached - recomputed).abs().max().item() < 1e-12
    assert torch.equal(model._to_images(cached), model._to_images(recomputed))


def test_a_block_is_autoregressive_in_its_direction():
    # d z_i / d x_j = 0 for j after i (in the block's order): the Jacobian is triangular, which is
    # what makes the log-det the sum of the log-scales.
    for reverse in (False, True):
        block = randomize(AutoregressiveBlock(2, (2, 3), width=8, layers=2, heads=2, reverse=reverse))
        x = torch.randn(1, 2, 2, 3)
        jac = torch.autograd.functional.jacobian(lambda v, b=block: b(v)[0], x).reshape(12, 12)
        order = torch.arange(6).flip(0) if reverse else torch.arange(6)  # position -> rank in the order
        rank = order.repeat(2)  # channel-major flattening: entry c * 6 + p is position p
        later = rank[None, :] > rank[:, None]  # [i, j]: x_j comes after z_i
        assert jac[later].abs().max().item() == 0
        same = rank[None, :] == rank[:, None]
        assert jac[same & ~torch.eye(12, dtype=torch.bool)].abs().max().item() == 0  # a token's values: diagonal
        first = rank == 0
        assert torch.equal(block(x)[0].flatten()[first], x.flatten()[first])  # the first token passes unchanged


def test_log_scales_stay_bounded_whatever_the_parameters():
    block = AutoregressiveBlock(4, (2, 2), width=8, layers=1, heads=2, max_log_scale=3.0)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 30.0)  # a Transformer far off its initialisation
    x = torch.randn(5, 4, 2, 2)
    z, logdet = block(x)
    assert torch.isfinite(z).all() and (logdet.abs() <= 3.0 * 12 + 1e-9).all()  # 3 tokens of 4 are scaled
    # Weights this wild make the net amplify the rounding of earlier tokens, but it stays invertible.
    assert (block.inverse(z)[0] - x).abs().max().item() < 1e-5


def test_layers_per_block_give_the_deep_shallow_design():
    # STARFlow's layout: shallow blocks next to the data, the deep one last (next to the latent).
    body = build_tarflow((1, 8, 8), TarflowConfig(patch=2, blocks=4, layers=(1, 1, 1, 3), width=8, heads=2))
    blocks = [f for f in body.levels[0].flow.flows if isinstance(f, AutoregressiveBlock)]
    assert [len(b.net.layers) for b in blocks] == [1, 1, 1, 3]
    assert [b.reverse for b in blocks] == [False, True, False, True]
    one = config_from_dict({"model": {"arch": "tarflow", "image_shape": [1, 8, 8], "tarflow": {"layers": 2}}})
    assert one.model.tarflow.layers == (2,)  # one count: every block


@pytest.mark.parametrize("section,message", [
    ({"patch": 3}, "patch must tile the 8x8 image"),
    ({"patch": 8}, "single token"),
    ({"blocks": 4, "layers": [2, 1]}, "one per block"),
    ({"width": 10, "heads": 4}, "multiple of model.tarflow.heads"),
    ({"max_log_scale": 0}, "max_log_scale must be in (0, 20]"),
    ({"scale": "spline"}, "is not one of"),
    ({"hidden": 8}, "unknown key 'model.tarflow.hidden'"),
])
def test_bad_sections_are_one_line_errors(section, message):
    with pytest.raises(ConfigError, match=None) as e:
        config_from_dict({"model": {"arch": "tarflow", "image_shape": [1, 8, 8], "tarflow": section}})
    assert message in str(e.value) and "\n" not in str(e.value)
