"""Every registered data set, through the path ``nfgen train`` takes (``load_split``), on tiny
files in its real on-disk format (tests/dataset_files.py): shape, pixels, split sizes, class
names and labels, and a damaged or missing file refused in one line that names the data set.
Parametrized over the registry: a new data set gets these checks with no edit here."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from dataset_files import WRITERS

from nfgen.config.schema import ConfigError, config_from_dict
from nfgen.datasets import DATASETS, DataSet, register_dataset
from nfgen.datasets.labels import Labelled
from nfgen.datasets.splits import class_names, load_split
from nfgen.errors import DataError

NAMES = sorted(DATASETS)


def cfg(dataset: str, root, shape, k: int = 0, **data):
    return config_from_dict({"data": {"dataset": dataset, "root": str(root), "download": False, "num_workers": 0,
                                      **data},
                             "model": {"image_shape": list(shape), "glow": {"levels": 1}, "num_classes": k}})


def tiny(name: str, root, monkeypatch):
    ds = DATASETS[name]
    return ds, WRITERS[type(ds)](ds, root, monkeypatch)


def items(split) -> torch.Tensor:
    return torch.stack([split[i] for i in range(len(split))])


def test_every_data_set_has_a_tiny_writer():
    missing = [n for n in NAMES if type(DATASETS[n]) not in WRITERS]
    assert not missing, f"add a writer of their format to tests/dataset_files.py WRITERS: {missing}"
    assert {"mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn", "imagenet32", "imagenet64",
            "celeba", "folder"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_splits_hold_the_files_images_at_the_models_shape(name, tmp_path, monkeypatch):
    ds, t = tiny(name, tmp_path, monkeypatch)
    for split, expected, n in (("train", t.train, t.n_train), ("test", t.test, t.n_test)):
        x = items(load_split(cfg(name, tmp_path, t.shape), split))
        assert x.dtype == torch.uint8 and tuple(x.shape) == (n, *t.shape)
        if expected is not None:
            assert torch.equal(x, torch.from_numpy(np.ascontiguousarray(expected)))
        else:
            assert x.float().std() > 10  # real pixels, not a blank


@pytest.mark.parametrize("name", NAMES)
def test_class_names_and_labels(name, tmp_path, monkeypatch):
    ds, t = tiny(name, tmp_path, monkeypatch)
    if t.train_labels is None:  # a data set without classes refuses a conditional model
        if ds.classes is None and name != "folder":
            with pytest.raises(ConfigError, match=f"{ds.title} has no classes"):
                load_split(cfg(name, tmp_path, t.shape, k=3), "train")
            with pytest.raises(DataError, match=ds.title):
                class_names(cfg(name, tmp_path, t.shape))
        return
    k = len(ds.classes)
    assert len(set(ds.classes)) == k and all(ds.classes)
    for split, labels in (("train", t.train_labels), ("test", t.test_labels)):
        data = load_split(cfg(name, tmp_path, t.shape, k=k), split)
        assert isinstance(data, Labelled) and data.class_names == list(ds.classes)
        assert torch.equal(data.labels, torch.from_numpy(labels.astype(np.int64)))
    assert class_names(cfg(name, tmp_path, t.shape, k=k)) == list(ds.classes)
    with pytest.raises(ConfigError, match=f"{ds.title} has {k} classes; model.num_classes is {k + 1}"):
        load_split(cfg(name, tmp_path, t.shape, k=k + 1), "train")


@pytest.mark.parametrize("name", NAMES)
def test_a_damaged_file_is_refused_in_one_line_naming_it(name, tmp_path, monkeypatch):
    ds, t = tiny(name, tmp_path, monkeypatch)
    data = t.damage.read_bytes()
    t.damage.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        for split in ("train", "test"):
            items(load_split(cfg(name, tmp_path, t.shape), split))
    msg = str(e.value)
    assert "\n" not in msg and str(t.damage) in msg
    assert ds.title in msg or name == "folder"  # a folder's file is the user's own: its path names it


@pytest.mark.parametrize("name", NAMES)
def test_missing_files_say_which_data_set_and_where(name, tmp_path, monkeypatch):
    ds, t = tiny(name, tmp_path / "data", monkeypatch)
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(DataError) as e:
        load_split(cfg(name, tmp_path / "data", t.shape), "train")
    msg = str(e.value)
    assert "\n" not in msg and ds.title in msg and str(tmp_path / "data") in msg


@pytest.mark.parametrize("name", NAMES)
def test_a_shape_it_cannot_make_is_a_config_error_naming_it(name, tmp_path):
    if not DATASETS[name].shapes and name == "folder":
        shape = [2, 8, 8]  # an image folder resizes to any size, but gives grey or RGB only
    else:
        shape = [3, 6, 10]  # no data set here makes 6x10 (and it passes the model's own checks)
    with pytest.raises(ConfigError, match=DATASETS[name].title):
        load_split(cfg(name, tmp_path, shape), "train")


def test_an_unknown_data_set_lists_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError, match="'fashion-mnist' is not a data set .did you mean 'fashion_mnist'.*kmnist"):
        cfg("fashion-mnist", tmp_path, [1, 28, 28])


def test_a_registration_is_all_a_new_data_set_needs(tmp_path, monkeypatch):
    """A data set registered outside the package (as a plugin module would) is a config choice,
    checked against the model's shape and classes, and loads through load_split."""

    class Squares(DataSet):
        title = "Squares"
        help = "grey squares, for this test"
        shapes = ((1, 4, 4),)
        classes = ("dark", "light")

        def load(self, cfg, split):
            from nfgen.datasets import Split
            from nfgen.datasets.tensors import ArrayImages

            images = torch.tensor([[[[40] * 4] * 4], [[[200] * 4] * 4]], dtype=torch.uint8)
            return Split(ArrayImages(images), torch.tensor([0, 1]), list(self.classes))

    register_dataset("squares", Squares())
    try:
        data = load_split(cfg("squares", tmp_path, [1, 4, 4], k=2), "test")
        assert data.class_names == ["dark", "light"] and [int(data[i][0][0, 0, 0]) for i in range(2)] == [40, 200]
        with pytest.raises(ConfigError, match="Squares images are 1x4x4"):
            load_split(cfg("squares", tmp_path, [1, 8, 8]), "test")
        register_dataset("squares", Squares())  # the same data set again (its module reloaded) replaces it
        with pytest.raises(ValueError, match="registered twice"):
            register_dataset("squares", DATASETS["mnist"])
    finally:
        del DATASETS["squares"]


def test_van_den_oord_imagenet_pngs_are_read_unlabelled(tmp_path):
    from datasets import write_image_folder

    images = np.random.default_rng(3).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    write_image_folder(tmp_path / "train_32x32", list(images[:3]), split_dirs=False)
    write_image_folder(tmp_path / "valid_32x32", list(images[3:]), split_dirs=False)
    x = items(load_split(cfg("imagenet32", tmp_path, [3, 32, 32]), "test"))
    assert torch.equal(x, torch.from_numpy(images[3:].transpose(0, 3, 1, 2).copy()))
    with pytest.raises(DataError, match="PNG form .* has no labels: train an unconditional model"):
        load_split(cfg("imagenet32", tmp_path, [3, 32, 32], k=1000), "train")


def test_fashion_mnist_trains_from_the_cli(tmp_path, monkeypatch):
    """FashionMNIST, one registration, end to end: tiny IDX files, `nfgen train` for a few steps
    on a conditional model, its checkpoint holding Fashion-MNIST's class names."""
    import yaml
    from typer.testing import CliRunner

    from nfgen.cli.app import app
    from nfgen.training.checkpoint import load_checkpoint

    ds, t = tiny("fashion_mnist", tmp_path / "data", monkeypatch)
    config = {"name": "fashion", "data": {"dataset": "fashion_mnist", "root": str(tmp_path / "data"),
                                          "download": False, "num_workers": 0},
              "model": {"arch": "glow", "image_shape": [1, 28, 28], "num_classes": 10,
                        "glow": {"levels": 2, "steps": 1, "hidden": 8}},
              "train": {"device": "cpu", "batch_size": 8, "max_steps": 3, "warmup_steps": 1, "log_every": 1,
                        "eval_every": 3, "sample_every": 3, "sample_count": 10, "checkpoint_every": 3,
                        "eval_batches": 1}}
    path = tmp_path / "fashion.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["progress"]["step"] == 3 and state["class_names"] == list(ds.classes)
    assert state["class_names"][9] == "Ankle boot"


def test_svhn_without_scipy_says_what_to_install(tmp_path, monkeypatch):
    import sys

    ds, t = tiny("svhn", tmp_path, monkeypatch)
    monkeypatch.setitem(sys.modules, "scipy", None)  # as if scipy were not installed
    with pytest.raises(DataError) as e:
        load_split(cfg("svhn", tmp_path, t.shape), "train")
    assert "\n" not in str(e.value) and "pip install scipy" in str(e.value) and "nfgen[data]" in str(e.value)


def test_imagenet_batches_of_the_other_size_are_named(tmp_path, monkeypatch):
    ds, t = tiny("imagenet32", tmp_path, monkeypatch)
    (tmp_path / "Imagenet32_train_npz").rename(tmp_path / "Imagenet64_train_npz")
    (tmp_path / "Imagenet32_val_npz").rename(tmp_path / "Imagenet64_val_npz")
    with pytest.raises(DataError, match="rows are 12288 uint8 values .*it looks like ImageNet 32x32's set"):
        load_split(cfg("imagenet64", tmp_path, [3, 64, 64]), "test")


def test_celeba_is_cropped_to_148_then_resized(tmp_path, monkeypatch):
    """A face whose 148x148 center is one colour and whose border another: after the crop and the
    resize to 32x32 no border colour is left."""
    from PIL import Image

    ds, t = tiny("celeba", tmp_path, monkeypatch)
    face = np.full((218, 178, 3), 250, dtype=np.uint8)
    top, left = (218 - 148) // 2, (178 - 148) // 2
    face[top:top + 148, left:left + 148] = (10, 120, 200)
    for path in sorted((tmp_path / "celeba" / "img_align_celeba").iterdir()):
        Image.fromarray(face).save(path, format="PNG")  # lossless under the .jpg name: Pillow reads by content
    x = items(load_split(cfg("celeba", tmp_path, [3, 32, 32]), "test"))
    assert x.shape == (2, 3, 32, 32)
    assert torch.equal(x, torch.tensor([10, 120, 200], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 32, 32))


@pytest.mark.parametrize("name", NAMES)
def test_download_offline_is_one_line_naming_the_data_set(name, tmp_path, monkeypatch):
    """data.download: true with no files and no network: torchvision's sets try to download and
    fail in one line; the others say they cannot be downloaded (or, a folder, that it is missing)."""
    import urllib.request
    from urllib.error import URLError

    from nfgen.datasets.torchvision_sets import TorchvisionSet

    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    ds = DATASETS[name]
    shape = ds.shapes[0] if ds.shapes else (3, 32, 32)
    with pytest.raises(DataError) as e:
        load_split(cfg(name, tmp_path / "data", shape, download=True), "train")
    msg = str(e.value)
    assert "\n" not in msg and ds.title in msg
    if isinstance(ds, TorchvisionSet):
        assert msg.startswith(f"could not download {ds.title} into") and "check the internet connection" in msg
    elif name != "folder":
        assert "cannot be downloaded automatically" in msg


PLUGIN = '''
import torch
from nfgen.datasets import DataSet, Split, register_dataset


class Stripes(DataSet):
    """Horizontal or vertical stripes: a data set registered by a user's module."""
    title = "Stripes"
    help = "8x8 grey stripes, 2 classes"
    shapes = ((1, 8, 8),)
    classes = ("horizontal", "vertical")

    def load(self, cfg, split):
        from nfgen.datasets.tensors import ArrayImages

        n = 16 if split == "train" else 8
        rows = (torch.arange(8) % 2 * 200 + 20).to(torch.uint8)
        horizontal = rows.view(8, 1).expand(8, 8)
        images = torch.stack([horizontal if i % 2 == 0 else horizontal.T for i in range(n)])[:, None]
        return Split(ArrayImages(images.contiguous()), torch.arange(n) % 2, list(self.classes))


register_dataset("stripes", Stripes())
'''


def test_a_plugin_module_registers_a_data_set_that_every_verb_reads(tmp_path):
    """From the shell: a config naming a user's module in plugins trains on the data set it
    registers; eval-bpd on the checkpoint imports it again and reads the test split."""
    import yaml
    from test_plugins import shell

    (tmp_path / "my_stripes.py").write_text(PLUGIN)
    config = {"name": "stripes", "plugins": ["my_stripes"],
              "data": {"dataset": "stripes", "root": str(tmp_path), "num_workers": 0},
              "model": {"arch": "glow", "image_shape": [1, 8, 8], "n_bits": 5, "num_classes": 2,
                        "glow": {"levels": 2, "steps": 1, "hidden": 8}},
              "train": {"device": "cpu", "batch_size": 8, "max_steps": 2, "warmup_steps": 1, "eval_every": 2,
                        "sample_every": 2, "sample_count": 4, "checkpoint_every": 2, "eval_batches": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    done = shell("train", "--config", tmp_path / "run.yaml", "--run-dir", tmp_path / "run", "--no-progress",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert torch.load(ckpt, weights_only=True)["class_names"] == ["horizontal", "vertical"]
    done = shell("eval-bpd", "--ckpt", ckpt, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config["model"]["image_shape"] = [1, 16, 16]  # a shape the plugin's data set cannot make
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    done = shell("train", "--config", tmp_path / "bad.yaml", "--run-dir", tmp_path / "bad", cwd=tmp_path)
    assert done.returncode != 0 and "Stripes images are 1x8x8" in done.stderr and "Traceback" not in done.stderr
