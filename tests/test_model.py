"""ImageFlow's API: encode/decode are exact inverses, samples are uint8 images of the right
shape, n_bits reduction, and input errors."""

import pytest
import torch
from flow_harness import randomize

import nfgen


def _model(arch: str = "glow", **model):
    section = {"levels": 2, "steps": 2, "hidden": 8, **({"blocks": 1} if arch == "realnvp" else {})}
    cfg = {"arch": arch, "image_shape": [3, 8, 8], arch: section} | model
    return randomize(nfgen.build_model({"model": cfg}), 0.05)


@pytest.mark.parametrize("arch,pre", [("glow", "shift"), ("realnvp", "logit")])
@pytest.mark.parametrize("n_bits", [8, 5])
def test_decode_inverts_encode_exactly(arch, pre, n_bits):
    model = _model(arch=arch, preprocess=pre, n_bits=n_bits)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    x = x // 2 ** (8 - n_bits) * 2 ** (8 - n_bits)  # an n_bits image, in 0..255
    zs = model.encode(x)
    assert [tuple(z.shape[1:]) for z in zs] == model.body.latent_shapes
    assert torch.equal(model.decode(zs), x)


def test_samples_are_images_and_temperature_narrows_them():
    model = _model()
    torch.manual_seed(0)
    hot = model.sample(16, temperature=1.0)
    torch.manual_seed(0)
    cold = model.sample(16, temperature=0.1)
    assert hot.dtype == torch.uint8 and hot.shape == (16, 3, 8, 8)
    assert cold.float().std() < hot.float().std()


def test_low_bit_samples_use_the_top_bits():
    model = _model(n_bits=3)
    x = model.sample(8)
    assert (x % 32 == 0).all()


def test_log_prob_rejects_bad_input():
    model = _model()
    with pytest.raises(TypeError, match="uint8"):
        model.log_prob(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected images of shape \[B, 3, 8, 8\]"):
        model.log_prob(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="n_samples"):
        model.log_prob(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), n_samples=0)


def test_model_sees_only_the_top_n_bits():
    model = _model(n_bits=5)
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8) // 8 * 8
    torch.manual_seed(3)
    a = model.log_prob(x)
    torch.manual_seed(3)
    b = model.log_prob(x + 7)  # same top 5 bits
    torch.manual_seed(3)
    c = model.log_prob(x ^ 8)  # lowest kept bit flipped
    assert torch.equal(a, b) and not torch.allclose(a, c)
