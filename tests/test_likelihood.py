"""The bound is a real probability: summed over every possible image it matches the model's own
mass in the data box, which catches any missing or extra term in bits/dim."""

import itertools
import math

import pytest
import torch
from archs import ARCHS, dequantizer, tiny_model

import nfgen
from nfgen.flows.architectures import architecture

# All 16 binary 1x2x2 images; with n_bits=1 the model keeps the top bit, so 0 and 255.
IMAGES = torch.tensor(list(itertools.product([0, 255], repeat=4)), dtype=torch.uint8).view(16, 1, 2, 2)


def _trained_model(arch, preprocess, dequantization):
    """A briefly trained model, so q(eps|x) is close to the posterior and the importance-weighted
    estimate converges; a random model would need far more draws."""
    model = nfgen.build_model({
        # A tiny body of the architecture for 1x2x2 images (the registry's), and a variational
        # dequantizer of its own kind (Flow++: its couplings).
        "model": {**tiny_model(arch, [1, 2, 2], depth=2, width=16), "n_bits": 1, "preprocess": preprocess},
        "dequantization": dequantizer(arch, kind=dequantization),
    })
    probs = torch.softmax(torch.randn(16), 0)
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(150):
        x = IMAGES[torch.multinomial(probs, 128, replacement=True)]
        loss = model.bits_per_dim(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# Every registered architecture with its preprocessing and a variational dequantizer (the bound
# with a learned q), and Glow with every other combination.
CASES = [(arch, architecture(arch).preprocess, "variational") for arch in ARCHS]
CASES += [("glow", p, d) for p in ("shift", "logit") for d in ("uniform", "variational") if ("glow", p, d) not in CASES]


@pytest.mark.parametrize("arch,preprocess,dequantization", CASES)
def test_probabilities_sum_to_mass_in_data_box(arch, preprocess, dequantization):
    model = _trained_model(arch, preprocess, dequantization)
    torch.set_grad_enabled(False)
    u = model.sample_continuous(50_000)  # the mass's standard error is ~0.001, against a 4% tolerance
    mass = ((u >= 0) & (u < 1)).flatten(1).all(1).double().mean().item()
    assert 0.3 < mass < 1.0  # a non-degenerate model: the check below has something to match

    n_draws = 2000 if arch == "glow" else 1000
    iw_total = model.log_prob(IMAGES, n_samples=n_draws).exp().sum().item()
    assert iw_total == pytest.approx(mass, rel=0.04)

    # One-draw bound, averaged over draws: E_q[bound] <= log P(x), so its exp sums below the mass.
    elbo = torch.stack([model.log_prob(IMAGES) for _ in range(200)]).mean(0)
    assert elbo.exp().sum().item() < mass


def test_bits_per_dim_is_log_prob_in_bits():
    model = _trained_model("glow", "shift", "uniform")
    torch.manual_seed(1)
    lp = model.log_prob(IMAGES)
    torch.manual_seed(1)
    bpd = model.bits_per_dim(IMAGES)
    assert torch.allclose(bpd, -lp / (4 * math.log(2)))


def test_importance_weighting_tightens_the_bound():
    model = _trained_model("glow", "logit", "variational")
    torch.set_grad_enabled(False)
    one = torch.stack([model.log_prob(IMAGES) for _ in range(50)]).mean(0)
    many = model.log_prob(IMAGES, n_samples=256)
    assert (many > one).all()
