"""Class-conditional models: each class's probabilities are real probabilities, their mixture is the
unconditional model, and guidance follows its stated convention."""

import itertools

import pytest
import torch
from archs import ARCHS, tiny_model

import nfgen
from nfgen.config.schema import ConfigError, config_from_dict
from nfgen.flows.tarflow import set_kv_cache
from nfgen.tasks.generate import class_rows

# All 16 binary 1x2x2 images; with n_bits=1 the model keeps the top bit, so 0 and 255.
IMAGES = torch.tensor(list(itertools.product([0, 255], repeat=4)), dtype=torch.uint8).view(16, 1, 2, 2)
ONES = (IMAGES > 0).flatten(1).sum(1)

def _model(arch, **model):
    """A tiny model of ``arch`` (the registry's) for 1x2x2 images, two classes."""
    return nfgen.build_model({"model": {**tiny_model(arch, [1, 2, 2], depth=2, width=16), "n_bits": 1,
                                        "num_classes": 2, "class_dim": 4, **model}})


def _trained(arch):
    """Two classes with different image distributions: class 0 mostly dark images, class 1
    mostly bright ones; trained briefly with label dropout so the null class learns the mixture."""
    model = _model(arch, label_dropout=0.2)
    weights = torch.stack([torch.exp(-1.0 * ONES), torch.exp(-1.0 * (4 - ONES))]).double()
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(150):
        y = torch.randint(0, 2, (128,))
        x = IMAGES[torch.multinomial(weights[y], 1).squeeze(1)]
        loss = model(x, labels=y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_each_class_sums_to_its_mass_and_the_mixture_to_their_mean(arch):
    model = _trained(arch)
    torch.set_grad_enabled(False)
    masses = []
    for y in range(2):
        u = model.sample_continuous(40_000, labels=torch.full((40_000,), y))
        masses.append(((u >= 0) & (u < 1)).flatten(1).all(1).double().mean().item())
    assert all(0.3 < m < 1.0 for m in masses)

    per_class = model.log_prob_classes(IMAGES, n_samples=1000).exp()  # [16, 2]
    for y in range(2):
        assert per_class[:, y].sum().item() == pytest.approx(masses[y], rel=0.05)
    # The classes were learned: class 1 puts more mass on bright images than class 0 does.
    bright = ONES >= 3
    assert per_class[bright, 1].sum() > 2 * per_class[bright, 0].sum()
    marginal = model.log_prob_marginal(IMAGES, n_samples=1000).exp()
    assert marginal.sum().item() == pytest.approx(sum(masses) / 2, rel=0.05)

    # log_prob with labels is the same estimate as the per-class table's column.
    torch.manual_seed(3)
    one = model.log_prob(IMAGES, labels=torch.ones(16, dtype=torch.long), n_samples=1000)
    assert torch.allclose(one.exp(), per_class[:, 1], rtol=0.1)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_fresh_conditional_model_starts_unconditional(arch):
    # Every class-dependent layer starts at zero: training begins from the unconditional model.
    model = nfgen.build_model({"model": tiny_model(arch, [1, 8, 8]) | {"num_classes": 3}}).eval()
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    noise = model.draw_noise(4)
    lp = [model.log_prob(x, noise=noise, labels=torch.full((4,), y)) for y in range(3)]
    assert torch.allclose(lp[0], lp[1], atol=1e-10) and torch.allclose(lp[0], lp[2], atol=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
def test_guidance_convention(arch):
    model = _trained(arch)
    labels = torch.tensor([0, 1, 0, 1])
    null = torch.full((4,), 2)

    def draw(labels, w):
        return model.sample_continuous(4, labels=labels, guidance=w, generator=torch.Generator().manual_seed(5))

    # Weight 0 is the plain conditional sample; the null class is the unconditional model's
    # sample, whatever the weight; a weight changes a class's sample.
    assert torch.equal(draw(labels, 0.0), draw(labels, 0))
    assert torch.allclose(draw(null, 3.0), draw(null, 0.0), atol=1e-12)
    assert (draw(labels, 3.0) - draw(labels, 0.0)).abs().max() > 1e-3


def test_guided_tarflow_sampling_with_and_without_the_cache_agree():
    model = _trained("tarflow")
    labels = torch.tensor([0, 1, 1])
    kw = {"labels": labels, "guidance": 2.0, "annealed": True}
    cached = model.sample_continuous(3, generator=torch.Generator().manual_seed(1), **kw)
    set_kv_cache(model, False)
    plain = model.sample_continuous(3, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.allclose(cached, plain, atol=1e-12)


def test_label_dropout_swaps_for_the_null_class_at_its_rate():
    model = _model("glow", label_dropout=0.25)
    labels = torch.tensor([0, 1, 0, 1])
    dropped = model.drop_labels(labels, torch.tensor([0.1, 0.3, 0.24, 0.9]))
    assert dropped.tolist() == [2, 1, 2, 1]
    assert model.drop_labels(labels, None).shape == (4,)
    assert torch.equal(_model("glow").drop_labels(labels), labels)  # no dropout configured


def test_conditional_errors_say_what_to_do():
    model = _model("glow")  # no label dropout
    with pytest.raises(ValueError, match="class-conditional .*give labels"):
        model.log_prob(IMAGES)
    with pytest.raises(ValueError, match="label_dropout > 0"):
        model.sample(2, labels=torch.tensor([0, 1]), guidance=1.0)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.1"):
        model.log_prob(IMAGES[:2], labels=torch.tensor([0, 5]))
    plain = nfgen.build_model({"model": tiny_model("glow", [1, 2, 2], depth=2, width=16)})
    with pytest.raises(ValueError, match="unconditional"):
        plain.sample(2, labels=torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="label_dropout needs a class-conditional"):
        config_from_dict({"model": {"label_dropout": 0.1}})


def test_a_grid_has_a_row_per_class_or_spreads_its_rows_over_many_classes():
    labels, nrow = class_rows(10, 64)
    assert nrow == 6 and labels.tolist() == [k for k in range(10) for _ in range(6)]
    labels, nrow = class_rows(1000, 64)  # ImageNet: 8 classes from first to last, 8 samples each
    assert nrow == 8 and len(labels) == 64
    assert labels.unique().tolist() == sorted(set(labels.tolist())) and len(labels.unique()) == 8
    assert labels.min() == 0 and labels.max() == 999
