"""``nfgen eval-fid``: sample quality against a reference set (registered in ``cli.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nfgen.cli import support as opts
from nfgen.config.schema import MAX_SEED, check_device_name, load_config
from nfgen.core.outputs import check_outputs, is_stdout, opened
from nfgen.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torch.utils.data import Dataset


def eval_fid(
    ckpt: Annotated[Path | None, typer.Option(help="Sample this checkpoint for the generated set (as `nfgen sample` "
                                              "does); its config gives --ref's data.")] = None,
    gen: Annotated[Path | None, typer.Option(help="Or score the images in this folder (any model's samples).")] = None,
    ref: Annotated[str, typer.Option(help="The reference set: a split of the data (train, test) or a folder of "
                                     "images.")] = "train",
    config: Annotated[str | None, typer.Option(help="With --gen: the config whose data and image shape the sets "
                                               "use (a path or a shipped name).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value, e.g. data.root=DIR "
                                                   "(repeatable).")] = None,
    n: Annotated[int, typer.Option(help="Samples to draw from --ckpt.")] = 10000,
    batch_size: Annotated[int, typer.Option(help="Images per batch, for sampling and for the features.")] = 250,
    temperature: Annotated[float, typer.Option(help="Latent std of the samples.")] = 1.0,
    label: Annotated[list[str] | None, typer.Option(help="A class-conditional model: sample these classes in turn "
                                                    "(repeatable; a name, a number or null; default: every "
                                                    "class in turn).")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance weight (as `nfgen sample`).")] = 0.0,
    annealed: Annotated[bool, typer.Option(help="TarFlow: grow the guidance weight over the tokens.")] = False,
    denoise: Annotated[bool, typer.Option(help="A Gaussian-noise model: one Tweedie denoising step.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the sampling generator.")] = 0,
    features: Annotated[Path | None, typer.Option(help="A TorchScript feature extractor ([B, C, H, W] floats in "
                                                  "[0, 1] -> [B, F]) instead of Inception.")] = None,
    inception_weights: Annotated[Path | None, typer.Option(help="The FID Inception weights file "
                                                           "(weights-inception-2015-12-05-6726825d.pth); default: "
                                                           "torch.hub's cache, downloaded there if missing.")] = None,
    kid_subsets: Annotated[int, typer.Option(help="KID: random subsets averaged.")] = 100,
    kid_subset_size: Annotated[int, typer.Option(help="KID: images per subset (at most the smaller set).")] = 1000,
    pr_k: Annotated[int, typer.Option(help="Precision/recall: the k-th neighbour that sets each ball's radius.")] = 3,
    threshold: Annotated[float, typer.Option(help="--features with a logits method: the softmax probability "
                                             "at which the classifier reads an image confidently.")] = 0.9,
    cache_dir: Annotated[Path | None, typer.Option(help="Where reference statistics are cached (default "
                                                   "~/.cache/nfgen/fid).")] = None,
    cache: Annotated[bool, typer.Option(help="Reuse and store reference statistics.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the record as JSON; - for standard "
                                                  "output.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """FID, KID, precision and recall of generated images against a reference set, on the FID
    Inception features or a TorchScript extractor; with a classifier's logits, the share of
    samples it reads confidently."""
    from nfgen.datasets.images import load_folder
    from nfgen.datasets.registry import SPLITS
    from nfgen.datasets.splits import load_split
    from nfgen.tasks.fidelity import features as extractors
    from nfgen.tasks.fidelity import sets
    from nfgen.tasks.fidelity.cache import default_cache_dir
    from nfgen.tasks.fidelity.report import compare, summary

    with opts.user_errors():
        if (ckpt is None) == (gen is None):
            raise ConfigError("give exactly one of --ckpt FILE (sample it) or --gen FOLDER (score its images)")
        if gen is not None and config is None:
            raise ConfigError("with --gen, give --config: the data (for --ref) and the image shape both sets use")
        if ckpt is not None and config is not None:
            raise ConfigError("--config goes with --gen; a checkpoint carries its own config (change its data with --set)")
        if features is not None and inception_weights is not None:
            raise ConfigError("give one of --features (a TorchScript extractor) or --inception-weights")
        opts.in_range("--n", n, 2, 10_000_000)
        opts.in_range("--batch-size", batch_size, 1, 65536)
        opts.in_range("--seed", seed, 0, MAX_SEED)
        opts.in_range("--kid-subsets", kid_subsets, 1, 100_000)
        opts.in_range("--kid-subset-size", kid_subset_size, 2, 10_000_000)
        opts.in_range("--pr-k", pr_k, 1, 1000)
        if not 0 < temperature <= 100:
            raise ConfigError(f"--temperature must be a number in (0, 100], got {temperature}")
        if not 0 <= guidance <= 100:
            raise ConfigError(f"--guidance must be a number in [0, 100], got {guidance}")
        if not 0 < threshold <= 1:
            raise ConfigError(f"--threshold must be a probability in (0, 1], got {threshold}")
        if gen is not None and (label or guidance or annealed):
            raise ConfigError("--label, --guidance and --annealed choose how --ckpt is sampled; --gen images are given")
        check_outputs({"--json": json_out}, overwrite)
        check_device_name(device)
        extractors.need_torch_fidelity()
        dev = opts.torch_device(device)
        feats = (extractors.torchscript_features(features, dev) if features is not None
                 else extractors.inception_features(extractors.inception_weights(inception_weights), dev))
        trained = None
        if ckpt is not None:
            trained = opts.load_trained(ckpt, set_, device)
            model, cfg, names = trained.model, trained.cfg, trained.class_names
            opts.sample_labels(model, cfg, names, label or [], n, guidance, annealed)  # every mismatch refused
        else:
            model, cfg, names = None, load_config(config, set_), []
        shape = tuple(cfg.model.image_shape)

        def image_set(where: str | Path) -> tuple[str, Dataset]:
            """A split of the data (a checkpoint's: its classes checked) or a folder of images."""
            if isinstance(where, str) and where in SPLITS:
                return where, trained.split(where) if trained is not None else load_split(cfg, where)
            return Path(where).name or str(where), load_folder(where, shape)

        ref_name, ref_data = image_set(ref)
        progress = sys.stderr.isatty()
        where = None if not cache else (cache_dir or default_cache_dir())
        try:
            reference, hit = sets.reference(ref_data, feats, where, batch_size, progress)
        except ValueError as e:
            raise DataError(f"--ref {ref}: {e}") from None
        sampling = None
        if model is not None:
            labels = requested = None
            if model.num_classes:
                rows = ([opts.label_index(v, names, model.label_dropout > 0) for v in label] if label
                        else list(range(model.num_classes)))
                labels, requested = sets.request_labels(rows, n, model.num_classes)
            denoised = denoise and model.noise_sigma is not None
            generated = sets.from_model(model, feats, n, batch_size, temperature, labels, guidance, annealed,
                                        denoised, seed, progress, requested)
            sampling = {"checkpoint": str(ckpt), "weights": "the checkpoint's EMA weights when it has them",
                        "temperature": temperature, "seed": seed, "batch_size": batch_size,
                        "labels": (label or "every class in turn") if model.num_classes else None,
                        "guidance": guidance, "annealed": annealed, "denoise": denoised,
                        "noise_sigma": model.noise_sigma}
        else:
            generated = sets.from_images(image_set(gen)[1], feats, batch_size, progress)
        try:
            result = compare(generated, reference, kid_subsets, kid_subset_size, pr_k, threshold, seed)
        except ValueError as e:
            raise DataError(str(e)) from None
        n_gen = len(generated.features)
        record = {**result, "features": feats.record(),
                  "reference": {"set": ref_name, "source": str(ref), "data": cfg.data.dataset, "root": cfg.data.root,
                                "n_images": reference.n, "content_sha256": reference.content_sha256,
                                "cache": hit, "cache_dir": None if where is None else str(where)},
                  "generated": {"source": "checkpoint" if model is not None else str(gen), "n_requested": generated.n_requested,
                                "n_images": n_gen, "n_nonfinite": generated.n_nonfinite,
                                "nonfinite_rule": "counted, and left out of every metric", "sampling": sampling},
                  "image_shape": list(shape)}
        to_stdout = is_stdout(json_out)
        typer.echo(summary(result, n_gen, reference.n, generated.n_nonfinite), err=to_stdout)
        if json_out is not None:
            with opened(json_out) as f:
                f.write(json.dumps(record, indent=2) + "\n")
