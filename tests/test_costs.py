"""What an input costs, estimated before it is allocated (nfgen.core.costs): models of every registered
architecture, images resized to the model's shape, and every kind of picture nfgen draws."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from archs import tiny_model
from datasets import digits, write_image_folder
from PIL import Image
from torchvision import transforms
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.config.schema import ConfigError, config_from_dict
from nfgen.core.costs import check_figure, figure_side, grid_pixels, image_cost, max_pixels, model_cost, resized_size
from nfgen.datasets.images import load_folder
from nfgen.errors import DataError
from nfgen.model.image_flow import ARCHITECTURES, build_model, build_unchecked
from nfgen.tasks.classify import Classification, draw_confusion
from nfgen.tasks.ood_metrics import histogram
from nfgen.training.memory import check_training_fits, saved_activation_bytes
from nfgen.training.run import train
from nfgen.training.step import autocast

runner = CliRunner()


def one_line(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def arch_config(arch: str, width: int = 8, num_classes: int = 0):
    return config_from_dict({"model": {**tiny_model(arch, [1, 8, 8], width=width), "num_classes": num_classes},
                             "dequantization": {"kind": "variational", "steps": 1, "hidden": 4},
                             "train": {"device": "cpu", "batch_size": 8, "ema_decay": 0.9}})


# ------------------------------------------------------------------ models, every architecture
@pytest.mark.parametrize("classes, amp", [(0, False), (3, False), (0, True)])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_estimate_is_the_model_built_for_real(arch, classes, amp):
    config = arch_config(arch, num_classes=classes)
    cpu = torch.device("cpu")
    cost = model_cost(lambda: build_unchecked(config), 8, (1, 8, 8), cpu, lambda: autocast(cpu, amp))
    torch.manual_seed(0)
    model = build_unchecked(config)
    x = torch.randint(0, 32, (8, 1, 8, 8), dtype=torch.uint8)
    labels = torch.zeros(8, dtype=torch.long) if classes else None
    model(x, labels=labels)  # actnorm's data-dependent init, as training's first batch

    def loss() -> torch.Tensor:
        with autocast(cpu, amp):
            return model(x, labels=labels).mean()

    assert cost.parameters == sum(p.numel() * p.element_size() for p in model.parameters())
    assert cost.activations == saved_activation_bytes(loss, model) > 0
    assert model_cost(lambda: build_unchecked(config)).parameters == cost.parameters  # the meta device's count


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_estimating_leaves_the_random_state_alone(arch):
    config = arch_config(arch)
    torch.manual_seed(1)
    model_cost(lambda: build_unchecked(config), 8, (1, 8, 8))
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(3))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_a_model_too_large_for_memory_is_refused_before_it_is_allocated(arch):
    config = arch_config(arch, width=65536)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with pytest.raises(ConfigError) as e:
        build_model(config, memory=lambda device: 16 * 10**9)
    message = str(e.value)
    assert "\n" not in message and re.search(r"needs [\d.]+ [GT]B, more than the 16.0 GB free on cpu", message)
    assert f"model.{arch}." in message and message.startswith(f"a {arch} model of ")
    # Nothing near the model's size was allocated (it needs more than 16 GB; 1 GB is all else).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss < 10**9


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_memory_bound_is_the_parameters_exactly(arch):
    config = arch_config(arch)
    need = model_cost(lambda: build_unchecked(config)).parameters
    build_model(config, memory=lambda device: need)
    with pytest.raises(ConfigError, match="more than the"):
        build_model(config, memory=lambda device: need - 1)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_training_needs_the_optimizer_state_and_a_batch_of_activations(arch):
    config = arch_config(arch)
    cost = check_training_fits(config, torch.device("cpu"), 8, memory=lambda device: None)  # unknown: allowed
    need = 5 * cost.parameters + cost.activations  # weights, gradients, two moments, the EMA
    check_training_fits(config, torch.device("cpu"), 8, memory=lambda device: need)
    with pytest.raises(ConfigError) as e:
        check_training_fits(config, torch.device("cpu"), 8, memory=lambda device: need - 1)
    assert "a batch of 8" in str(e.value) and "lower train.batch_size" in str(e.value)


def test_train_refuses_a_huge_tarflow_in_one_line_and_writes_nothing(tmp_path):
    write_image_folder(tmp_path / "data", list(digits(8)[:24]), split_dirs=True, n_test=8)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": "folder", "root": str(tmp_path / "data"), "num_workers": 0},
                                      "model": tiny_model("tarflow", [1, 8, 8]), "train": {"device": "cpu",
                                                                                           "batch_size": 8}}))
    result = runner.invoke(app, ["train", "--config", str(config), "--run-dir", str(tmp_path / "run"),
                                 "--set", "model.tarflow.width=65536", "--no-progress"])
    one_line(result, 2, "model.tarflow.width")
    assert re.search(r"needs [\d.]+ [GT]B, more than the [\d.]+ [GT]B free on cpu", result.output)
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ images
@pytest.mark.parametrize("size", [(5, 300), (300, 5), (7, 7), (64, 48), (1, 1000)])
@pytest.mark.parametrize("target", [(8, 8), (6, 10)])
def test_the_resized_size_is_torchvision_s(size, target):
    resized = transforms.Resize(max(target))(Image.new("L", size))
    assert resized_size(*size, target) == resized.size
    assert image_cost(*size, target) == max(size[0] * size[1], resized.size[0] * resized.size[1])


def tall_png(path: Path) -> Path:
    """1 x 4,000,000 pixels, a few kB: under Pillow's decompression-bomb check (89 million
    pixels), but resized to 8 x 8 it would be 8 x 32,000,000."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (1, 4_000_000)).save(path)
    return path


def test_an_image_that_resizing_would_blow_up_is_refused_when_listed_and_when_read(tmp_path):
    write_image_folder(tmp_path / "ok", list(digits(8)[:4]), split_dirs=False, n_test=0)
    tall_png(tmp_path / "bad" / "tall.png")
    with pytest.raises(DataError) as e:
        load_folder(tmp_path / "bad", (1, 8, 8))
    assert str(e.value) == (f"image {tmp_path / 'bad' / 'tall.png'} is 1 x 4000000 pixels; resizing it to the model's "
                            f"8 x 8 takes 8 x 32000000 = 256,000,000 pixels, over the limit of "
                            f"{max_pixels():,}: crop it to a less extreme shape or delete it")
    images = load_folder(tmp_path / "ok", (1, 8, 8))  # listed while fine, replaced before it is read
    tall_png(images.files[0])
    with pytest.raises(DataError, match="over the limit"):
        images[0]
    assert images[1].shape == (1, 8, 8)


def test_score_and_train_refuse_the_image_in_one_line(tmp_path):
    write_image_folder(tmp_path / "data", list(digits(8)[:24]), split_dirs=True, n_test=8)
    config = {"data": {"dataset": "folder", "root": str(tmp_path / "data"), "num_workers": 0},
              "model": tiny_model("glow", [1, 8, 8]), "train": {"device": "cpu", "batch_size": 8, "max_steps": 1}}
    train(config_from_dict(config), tmp_path / "run", progress=False)
    tall_png(tmp_path / "folder" / "tall.png")
    result = runner.invoke(app, ["score", "--ckpt", str(tmp_path / "run/checkpoints/last.pt"),
                                 "--folder", str(tmp_path / "folder")])
    one_line(result, 1, "tall.png is 1 x 4000000 pixels")
    tall_png(tmp_path / "data" / "train" / "tall.png")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["train", "--config", str(path), "--run-dir", str(tmp_path / "run2"), "--no-progress"])
    one_line(result, 1, "tall.png is 1 x 4000000 pixels")
    assert not (tmp_path / "run2" / "checkpoints").exists()


# ------------------------------------------------------------------ pictures, one bound for every kind
def classification(k: int, n: int = 3000) -> Classification:
    g = torch.Generator().manual_seed(0)
    return Classification(torch.randn(n, k, generator=g, dtype=torch.float64),
                          torch.randint(0, k, (n,), generator=g), [f"class{i}" for i in range(k)])


def test_a_confusion_matrix_of_1000_classes_fits_the_bound():
    wanted = 0.45 * 1000 + 1.8  # inches a side at 100 dpi, as drawn for few classes: 45,000 pixels
    side = figure_side(wanted, 0.8, 100)
    assert max_pixels() * 0.999 < (side + 0.8) * 100 * side * 100 <= max_pixels() < (wanted + 0.8) * 100 * wanted * 100


def test_a_large_confusion_matrix_is_drawn_smaller_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_500_000)  # the bound follows Pillow's
    note = draw_confusion(classification(300), tmp_path / "big.png")
    with Image.open(tmp_path / "big.png") as img:
        assert img.width * img.height <= 1_500_000
    assert note is not None and "confusion matrix of 300 classes is drawn at" in note
    assert "without class names" in note and "JSON" in note
    assert draw_confusion(classification(4), tmp_path / "small.png") is None  # nothing left out


@pytest.mark.parametrize("n, nrow", [(1, 1), (7, 3), (200, 14), (64, 8), (10, 20)])
def test_the_grid_size_is_make_grid_s(n, nrow):
    from torchvision.utils import make_grid

    assert grid_pixels(n, nrow, (3, 6, 5)) == tuple(make_grid(torch.zeros(n, 3, 6, 5), nrow=nrow, padding=2).shape[:0:-1])


def test_sample_grids_over_the_bound_are_refused_before_sampling(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "data", list(digits(8)[:24]), split_dirs=True, n_test=8)
    config = {"data": {"dataset": "folder", "root": str(tmp_path / "data"), "num_workers": 0},
              "model": tiny_model("glow", [1, 8, 8]), "train": {"device": "cpu", "batch_size": 8, "max_steps": 1,
                                                                "sample_count": 16}}
    train(config_from_dict(config), tmp_path / "run", progress=False)
    ckpt = str(tmp_path / "run/checkpoints/last.pt")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # about 100 images of 10 x 10 with their padding
    result = runner.invoke(app, ["sample", "--ckpt", ckpt, "--n", "200", "--out", str(tmp_path / "s.png")])
    one_line(result, 2, "a grid of 200 images of 8 x 8 is 142 x 152 = 21,584 pixels, over the limit of 10,000")
    assert "lower --n" in result.output and not (tmp_path / "s.png").exists()
    result = runner.invoke(app, ["interpolate", "--ckpt", ckpt, "--pairs", "8", "--steps", "20",
                                "--out", str(tmp_path / "i.png")])
    one_line(result, 2, "lower --pairs or --steps")
    with pytest.raises(ConfigError, match="lower train.sample_count"):
        train(config_from_dict({**config, "train": {**config["train"], "sample_count": 200}}), tmp_path / "run2")
    assert not (tmp_path / "run2" / "checkpoints").exists()
    assert runner.invoke(app, ["sample", "--ckpt", ckpt, "--n", "64", "--out", str(tmp_path / "ok.png")]).exit_code == 0


def test_a_histogram_over_the_bound_is_refused(tmp_path):
    names = [f"score{i}" for i in range(20_000)]  # 3.3 inches a panel
    scores = {"in": {n: np.zeros(3) for n in names}}
    with pytest.raises(ConfigError, match="the histogram of 20000 scores would be"):
        histogram(scores, "in", names, tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


def test_density2d_pictures_fit_the_bound_at_the_highest_dpi(tmp_path):
    from matplotlib.figure import Figure

    from nfgen.density2d.plots import density_figure, save_png, training_figure

    grid = torch.rand(4, 4)
    history = {k: [1.0, 2.0] for k in ("step", "elbo", "iw", "nll", "test_step", "test_ll")}
    figures = [density_figure(grid, grid, grid, 3.0, "target", "samples"),
               training_figure(history, "energy", 0.0), training_figure(history, "samples", None)]
    for fig in figures:  # eval.dpi's maximum, 600
        check_figure(*fig.get_size_inches(), 600, "a density2d picture", "eval.dpi")
    with pytest.raises(ConfigError, match="lower eval.dpi"):
        save_png(Figure(figsize=(100, 100)), tmp_path / "f.png", 600)
    assert not (tmp_path / "f.png").exists()
