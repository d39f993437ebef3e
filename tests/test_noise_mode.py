"""Generation mode (Gaussian noise augmentation, TarFlow): the Tweedie step against the exact
Gaussian posterior mean, the score against finite differences in every architecture, the step
on a trained model, the refusal of bits/dim, the command line end to end, the config's checks."""

import pytest
import torch
import yaml
from archs import ARCHS, tiny_model
from datasets import digits, write_image_folder
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

import nfgen
from nfgen.cli.app import app
from nfgen.config.schema import ConfigError, config_from_dict
from nfgen.flows.base import set_memory_saving
from nfgen.tasks.evaluate import NotALikelihoodError, evaluate_bpd
from nfgen.training.run import train

SIGMA = 0.05
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def gaussian(arch: str = "glow", sigma: float = SIGMA, **section) -> dict:
    """A tiny generation-mode model of ``arch`` on 5-bit 8x8 images."""
    return {"model": {**tiny_model(arch, (1, 8, 8), **section), "preprocess": "shift", "n_bits": 5},
            "dequantization": {"kind": "gaussian", "sigma": sigma}}


def digits_tensor() -> torch.Tensor:
    return torch.from_numpy(digits(8)).unsqueeze(1)  # uint8 [1797, 1, 8, 8]


def noisy(model: nfgen.ImageFlow, x: torch.Tensor, sigma: float = SIGMA) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean images (bin centres in u-space) and a Gaussian-noisy copy, as training sees them."""
    clean = (model._reduce(x) + 0.5) / model.levels
    return clean, clean + sigma * torch.randn_like(clean)


def latents(model: nfgen.ImageFlow, u: torch.Tensor) -> torch.Tensor:
    zs, _ = model.body(model.preprocess(u)[0])
    return torch.cat([z.flatten(1) for z in zs], 1)


def test_tweedie_step_is_the_exact_gaussian_posterior_mean():
    # A Glow whose coupling nets and split priors are at their zero start is affine, z = A u + b,
    # so its density is N(mu, Sigma) with Sigma = (A^T A)^-1; randomise its affine layers. For
    # clean images c ~ N(mu, S), S = Sigma - s^2 I, seen through noise of std s, Gaussian
    # conditioning gives E[c | u] = mu + S Sigma^-1 (u - mu): what one Tweedie step must return.
    model = nfgen.build_model(gaussian(steps=2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".net." not in name:  # actnorm, LU 1x1 convs, the learned top prior
                p.add_(0.3 * torch.randn_like(p))
    model.eval()
    d = model.dims
    u0, u1 = torch.rand(2, 1, 8, 8)
    jac = [torch.autograd.functional.jacobian(lambda v: latents(model, v.view(1, 1, 8, 8))[0], u.flatten())
           for u in (u0, u1)]
    assert torch.allclose(jac[0], jac[1], atol=1e-10)  # affine indeed: the closed form applies
    a = jac[0]
    assert torch.linalg.matrix_rank(a) == d and not torch.allclose(a.T @ a, torch.eye(d) * a[0, 0] ** 2)
    sigma_inv = a.T @ a
    with torch.no_grad():
        mu = u0.flatten() - torch.linalg.solve(a, latents(model, u0[None])[0])
    cov = torch.linalg.inv(sigma_inv)
    s = 0.5 * torch.linalg.eigvalsh(cov).min().sqrt().item()  # S = Sigma - s^2 I stays positive definite
    u = mu + 0.2 * torch.randn(4, d)
    expected = mu + (u - mu) @ (torch.eye(d) - s**2 * sigma_inv).T  # mu + S Sigma^-1 (u - mu)
    got = model.denoise(u.view(4, 1, 8, 8), sigma=s).flatten(1)
    assert torch.allclose(got, expected, atol=1e-9), (got - expected).abs().max()
    assert (got - u).abs().max() > 1e-3  # the step moved the images
    # Without a sigma, the model's own (dequantization.sigma) is used.
    own = model.denoise(u.view(4, 1, 8, 8)).flatten(1)
    assert torch.allclose(own, mu + (u - mu) @ (torch.eye(d) - SIGMA**2 * sigma_inv).T, atol=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_score_is_the_gradient_of_the_log_density_in_every_architecture(arch):
    torch.manual_seed(1)
    model = nfgen.build_model(gaussian(arch))
    model.train()
    model(digits_tensor()[:64])  # actnorm's data-dependent initialisation
    with torch.no_grad():
        for p in model.parameters():  # away from the zero start, so every coupling is nonlinear
            p.add_(0.02 * torch.randn_like(p))
    model.eval()
    _, u = noisy(model, digits_tensor()[100:104])
    score = model.score(u, max_batch=3)  # two chunks
    # A central difference along a random direction; h is small, as the ReLU nets have kinks.
    v, h = torch.randn_like(u), 1e-7
    with torch.no_grad():
        fd = (model.log_density(u + h * v) - model.log_density(u - h * v)) / (2 * h)
    assert torch.allclose((score * v).flatten(1).sum(1), fd, rtol=1e-5, atol=1e-5)
    assert torch.allclose(model.denoise(u), u + SIGMA**2 * score, atol=1e-10)  # other chunks: rounding
    set_memory_saving(model, True)  # its backward reconstructs activations: input gradients too
    assert torch.allclose(model.score(u), score, atol=1e-8)
    with torch.inference_mode():  # sampling may run under inference mode; the step still works
        assert torch.allclose(model.denoise(u), u + SIGMA**2 * score, atol=1e-8)


def test_tweedie_step_on_a_trained_model_raises_density_and_removes_noise():
    # Train a small Glow on noisy digits for a moment; then every noisy test digit must gain
    # model density under the step, and the step must bring the images closer to the clean
    # digits than the noise left them (a wrong sign, sigma for sigma^2, or a mean for a sum fails).
    torch.set_default_dtype(torch.float32)  # speed: a training run
    images = digits_tensor()
    model = nfgen.build_model(gaussian(steps=2, hidden=16))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    model(images[:256])
    for _ in range(100):
        loss = model(images[torch.randint(0, 1500, (64,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    clean, u = noisy(model, images[1500:1600])
    denoised = model.denoise(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # sampling under amp: the step stays float32
        assert torch.equal(model.denoise(u), denoised)
    with torch.no_grad():
        gain = model.log_density(denoised) - model.log_density(u)
    assert (gain > 0).all(), gain.min()
    before, after = ((u - clean) ** 2).mean(), ((denoised - clean) ** 2).mean()
    print(f"mean squared error to the clean digits: {before:.5f} -> {after:.5f}")
    assert after < 0.9 * before


def test_sampling_denoises_by_default_in_generation_mode_only():
    model = nfgen.build_model(gaussian()).eval()
    raw = model.sample_continuous(5, 0.8, torch.Generator().manual_seed(3), denoise=False)
    default = model.sample_continuous(5, 0.8, torch.Generator().manual_seed(3))
    assert torch.allclose(default, model.denoise(raw), atol=1e-12) and not torch.allclose(default, raw)
    images = model.sample(5, 0.8, torch.Generator().manual_seed(3))
    assert torch.equal(images, model._to_images(default))
    likelihood = nfgen.build_model({"model": gaussian()["model"]}).eval()
    assert likelihood.noise_sigma is None and not likelihood.denoises()
    with pytest.raises(ValueError, match="no sigma to denoise with"):
        likelihood.sample(2, denoise=True)
    assert likelihood.denoise(raw, sigma=0.01).shape == raw.shape  # an explicit sigma works anyway


def test_python_api_measures_the_noisy_density_and_refuses_a_likelihood():
    model = nfgen.build_model(gaussian()).eval()
    x = digits_tensor()[:6]
    noise = model.draw_noise(6)
    with torch.no_grad():
        bpd = model.bits_per_dim(x, noise=noise)
        u = (model._reduce(x) + 0.5) / model.levels + SIGMA * noise  # the noisy image, bin centre + noise
        expected = -(model.log_density(u) - model.dims * torch.log(torch.tensor(float(model.levels))))
    assert torch.allclose(bpd, expected / (model.dims * torch.log(torch.tensor(2.0))))
    with pytest.raises(ValueError, match="n_samples > 1"):
        model.log_prob(x, n_samples=4)
    with pytest.raises(NotALikelihoodError, match="not a likelihood of the discrete image"):
        evaluate_bpd(model, [x])


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory):
    """A tiny generation-mode Glow trained through the command line (shared by the CLI tests)."""
    tmp = tmp_path_factory.mktemp("gauss")
    write_image_folder(tmp / "data", list(digits(8)[:40]), split_dirs=True, n_test=8)
    config = tmp / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "g", "data": {"dataset": "folder", "root": str(tmp / "data"), "num_workers": 0},
        **gaussian(),
        "train": {"device": "cpu", "batch_size": 8, "max_steps": 3, "warmup_steps": 1, "eval_every": 3,
                  "log_every": 1, "sample_every": 3, "sample_count": 4, "checkpoint_every": 3,
                  "eval_batches": 1}}))
    run = tmp / "run"
    result = cli("train", "--config", config, "--run-dir", run, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "done: test noisy-image NLL" in result.output and "bits/dim" in result.output
    return tmp, run


def test_training_labels_its_numbers_as_the_noisy_images_nll(gaussian_run):
    _, run = gaussian_run
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/noisy_nll", "test/noisy_nll", "test/noisy_nll_stderr"} <= tags
    assert not any("bpd" in tag for tag in tags)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["metric"] == "noisy_nll"
    assert state["config"]["dequantization"] == {**state["config"]["dequantization"], "kind": "gaussian", "sigma": SIGMA}


def test_eval_bpd_refuses_a_gaussian_noise_model_in_one_line(gaussian_run):
    tmp, run = gaussian_run
    out = tmp / "new" / "r.json"
    result = cli("eval-bpd", "--ckpt", run / "checkpoints" / "last.pt", "--json", out)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Gaussian noise augmentation" in result.output and "not a likelihood of the discrete image" in result.output
    assert "dequantization.kind uniform or variational" in result.output
    assert not out.parent.exists()  # nothing written
    # nfgen score ranks images by bits/dim too: the same refusal, nothing written.
    result = cli("score", "--ckpt", run / "checkpoints" / "last.pt", "--split", "test", "--json", out)
    assert result.exit_code == 1 and "not a likelihood of the discrete image" in result.output, result.output
    assert not out.parent.exists() and not list(run.glob("checkpoints/*.json"))


def test_sample_interpolate_check_and_exact_resume_through_the_cli(gaussian_run, tmp_path):
    _, run = gaussian_run
    ckpt = run / "checkpoints" / "last.pt"
    result = cli("sample", "--ckpt", ckpt, "--n", 4, "--out", tmp_path / "d.png", "--device", "cpu")
    assert result.exit_code == 0 and "denoised by one Tweedie step (sigma 0.05)" in result.output, result.output
    result = cli("sample", "--ckpt", ckpt, "--n", 4, "--out", tmp_path / "r.png", "--no-denoise", "--device", "cpu")
    assert result.exit_code == 0 and "Tweedie" not in result.output, result.output
    with Image.open(tmp_path / "d.png") as a, Image.open(tmp_path / "r.png") as b:
        assert a.size == b.size and a.tobytes() != b.tobytes()  # same draws, one step apart
    result = cli("interpolate", "--ckpt", ckpt, "--pairs", 2, "--steps", 3, "--out", tmp_path / "i.png",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = cli("check", "--ckpt", ckpt, "--n", 2, "--device", "cpu")
    assert result.exit_code in (0, 1) and "Traceback" not in result.output, result.output


def test_resumed_gaussian_run_equals_uninterrupted_run(tmp_path):
    write_image_folder(tmp_path / "data", list(digits(8)[:40]), split_dirs=True, n_test=8)

    def config(run_dir, max_steps):
        return config_from_dict({
            "name": "g", "run_dir": str(run_dir), "data": {"dataset": "folder", "root": str(tmp_path / "data"),
                                                           "num_workers": 0},
            **gaussian(), "train": {"device": "cpu", "batch_size": 16, "max_steps": max_steps, "warmup_steps": 2,
                                    "eval_every": 100, "sample_every": 100, "checkpoint_every": 100, "seed": 3}})

    full, part = tmp_path / "full", tmp_path / "part"
    train(config(full, 5), full, progress=False)
    train(config(part, 3), part, progress=False)  # an epoch is 2 steps: the stop falls mid-epoch
    train(config(part, 5), part, resume=True, progress=False)
    a = torch.load(full / "checkpoints/last.pt", weights_only=True)
    b = torch.load(part / "checkpoints/last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    a["progress"].pop("train_seconds"), b["progress"].pop("train_seconds")  # wall-clock time may differ
    assert a["progress"] == b["progress"]


@pytest.mark.parametrize("dequantization,model,message", [
    ({"kind": "gaussian"}, {}, "dequantization.sigma must be in (0, 0.5] with kind gaussian"),
    ({"kind": "gaussian", "sigma": 0.6}, {}, "got 0.6"),
    ({"kind": "gaussian", "sigma": -0.1}, {}, "got -0.1"),
    ({"kind": "gaussian", "sigma": float("nan")}, {}, "dequantization.sigma: expected a finite number"),
    ({"kind": "gaussian", "sigma": "abc"}, {}, "dequantization.sigma: expected a number"),
    ({"kind": "uniform", "sigma": 0.05}, {}, "dequantization.sigma is the noise std of kind gaussian, but kind is uniform"),
    ({"kind": "variational", "sigma": 0.05}, {}, "but kind is variational"),
    ({"kind": "gaussian", "sigma": 0.05}, {"preprocess": "logit"}, "needs model.preprocess: shift"),
    ({"kind": "gausian", "sigma": 0.05}, {}, "'gaussian'"),
])
def test_config_checks_the_noise(dequantization, model, message):
    data = {"model": {**gaussian()["model"], **model}, "dequantization": dequantization}
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1
    # A config without the key (every config before generation mode) stays as it was.
    assert config_from_dict({"model": gaussian()["model"]}).dequantization.sigma == 0


def test_bad_sigma_on_the_command_line_is_refused_before_any_work(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "g", "data": {"dataset": "folder", "root": str(tmp_path)},
                                      **gaussian()}))
    result = cli("train", "--config", config, "--set", "dequantization.sigma=0", "--run-dir", tmp_path / "r")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "dequantization.sigma must be in (0, 0.5]" in result.output and "(unset)" in result.output
    assert not (tmp_path / "r").exists()
