"""The ``nfgen`` command line: one short function per verb; the work happens in the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

import nfgen
from nfgen.cli import support as opts
from nfgen.cli.config_verb import config_verb
from nfgen.cli.data_verb import data_app
from nfgen.cli.fid_verb import eval_fid
from nfgen.config.schema import DEVICE_HELP, MAX_SEED, check_device_name, load_config
from nfgen.core.outputs import check_outputs, folder_outputs, is_stdout, opened
from nfgen.errors import ConfigError, DataError, NumericalError
from nfgen.tasks.complexity import CODECS

# Each verb imports the library parts it uses (torch, torchvision, TensorBoard) when it runs:
# `nfgen --help`, `--version` and a usage error answer without importing them (tests/test_packaging.py).

# typer raises click's exceptions (its own vendored copy in typer >= 0.20): find the base class
# through a name typer exports, so this works with either.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineErrors(typer.core.TyperGroup):
    """A mistyped option (``--n abc``) is one line on stderr and exit code 2, like every other
    usage error, instead of the usage text and a framed box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.echo(f"error: {e.format_message()}{where}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code or 0)


app = typer.Typer(
    help="Train and use normalizing-flow image generators (Glow, RealNVP, Flow++, TarFlow), and 2-D flows you can "
         "look at.",
    no_args_is_help=True, pretty_exceptions_enable=False, cls=_OneLineErrors,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nfgen {nfgen.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Options of nfgen itself (the verbs have their own)."""


Sets = opts.Sets
Ckpt = Annotated[Path, typer.Option(help="Checkpoint file, e.g. runs/NAME/checkpoints/last.pt.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing output file.")]
Device = Annotated[str, typer.Option(help=f"{DEVICE_HELP} (auto: cuda, then mps, then cpu).")]
BatchSize = Annotated[int | None, typer.Option(help="Images per batch (default: the run's).")]


@app.command()
def train(
    config: Annotated[str | None, typer.Option(help="YAML config: a path, or a shipped name such as glow_cifar.yaml.")] = None,
    set_: Sets = None,
    resume: Annotated[bool, typer.Option(help="Continue the run from its checkpoints/last.pt.")] = False,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default runs/<name>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start over in a run folder that holds a run.")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Train a flow; checkpoints, TensorBoard logs and sample grids go to the run folder."""
    from nfgen.tasks.evaluate import metric
    from nfgen.training.distributed import is_main_process
    from nfgen.training.run import run_dir_for
    from nfgen.training.run import train as train_run

    with opts.user_errors():
        if config is None:
            if not (resume and run_dir):
                raise ConfigError("give --config FILE, or continue a run with `nfgen train --resume --run-dir DIR`")
            cfg = load_config(run_dir / "config.yaml", set_)
        else:
            cfg = load_config(config, set_)
        folder = run_dir_for(cfg, run_dir)
        bpd = train_run(cfg, folder, resume=resume, overwrite=overwrite, progress=progress)
        if is_main_process():
            typer.echo(f"done: test {metric(cfg.dequantization.kind == 'gaussian').text} {bpd:.4f}; "
                       f"checkpoints in {folder / 'checkpoints'}")


@app.command()
def sample(
    ckpt: Ckpt,
    n: Annotated[int, typer.Option(help="Number of samples (a class-conditional model: split evenly across its "
                                   "rows, at least one each).")] = 64,
    temperature: Annotated[float, typer.Option(help="Latent std (Glow shows 0.7).")] = 1.0,
    out: Annotated[Path, typer.Option(help="PNG grid to write.")] = Path("samples.png"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    nrow: Annotated[int | None, typer.Option(help="Images per grid row (default: square; one row per class).")] = None,
    each: Annotated[Path | None, typer.Option(help="Also write every sample as its own PNG here.")] = None,
    denoise: Annotated[bool, typer.Option(help="A model trained with Gaussian noise: one Tweedie denoising "
                                          "step (--no-denoise: the raw, noisy samples).")] = True,
    label: Annotated[list[str] | None, typer.Option(help="A class-conditional model: sample this class, a name or "
                                                    "a number, or null: the unconditional model (repeatable: a row "
                                                    "each; default: every class).")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance weight w: (1 + w) f(x, y) - w f(x, null) "
                                            "in every conditional layer (0: none; needs model.label_dropout > 0).")] = 0.0,
    annealed: Annotated[bool, typer.Option(help="TarFlow: grow the guidance weight over the tokens, w (i + 1) / (N - 1) "
                                           "at token i + 1 of N.")] = False,
    batch_size: Annotated[int, typer.Option(help="Samples drawn at a time (memory grows with it); --n or more "
                                            "draws exactly what one batch of --n does.")] = 256,
    overwrite: Overwrite = False,
    device: Device = "auto",
) -> None:
    """Write a grid of samples drawn at a temperature (a class-conditional model: a row per class)."""
    with opts.user_errors():
        opts.in_range("--n", n, 1, 65536)
        opts.in_range("--batch-size", batch_size, 1, 65536)
        opts.in_range("--nrow", n if nrow is None else nrow, 1, n)
        opts.in_range("--seed", seed, 0, MAX_SEED)
        if not 0 < temperature <= 100:  # also false for nan
            raise ConfigError(f"--temperature must be a number in (0, 100], got {temperature}")
        if not 0 <= guidance <= 100:
            raise ConfigError(f"--guidance must be a number in [0, 100], got {guidance}")
        if annealed and not guidance:
            raise ConfigError("--annealed anneals the guidance weight: give --guidance W > 0 with it")
        opts.image_path(out)
        check_device_name(device)
        import torch  # after the option checks: a usage error answers without importing torch

        from nfgen.tasks.generate import check_grid_size, sample_in_batches, save_grid

        t = opts.load_trained(ckpt, None, device)
        model, cfg, names = t.model, t.cfg, t.class_names
        labels, per_row = opts.sample_labels(model, cfg, names, label or [], n, guidance, annealed)
        count = n if labels is None else len(labels)  # a row per class: n rounded down to whole rows
        nrow = nrow if nrow is not None else per_row
        check_grid_size(count, model.shape, nrow, "--n")
        singles = [] if each is None else folder_outputs(each, [f"{i:05d}.png" for i in range(count)])
        check_outputs({"--out": out, "--each": singles}, overwrite, pictures=("--out", "--each"))
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        denoised = denoise and model.noise_sigma is not None
        images = sample_in_batches(model, count, batch_size, temperature, generator, labels, sys.stderr.isatty(),
                                   denoise=denoised, guidance=guidance, annealed=annealed)
        save_grid(images, opts.output_path(out), nrow)
        for image, path in zip(images, singles):
            save_grid(image[None], opts.output_path(path), 1)
        how = f", denoised by one Tweedie step (sigma {model.noise_sigma:g})" if denoised else ""
        if labels is not None:
            rows = [names[int(y)] if int(y) < len(names) else "null" for y in labels[::per_row]]
            shown = ", ".join(rows[:10]) + (", ..." if len(rows) > 10 else "")
            how += f", {len(rows)} row{'s' * (len(rows) != 1)} of {per_row} (class{'es' * (len(rows) != 1)} {shown})"
            how += f", guidance {guidance:g}{' annealed' if annealed else ''}" if guidance else ""
        typer.echo(f"wrote {count} samples at temperature {temperature:g}{how} to {out}")


@app.command("eval-bpd")
def eval_bpd(
    ckpt: Ckpt,
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    samples: Annotated[int, typer.Option(help="Dequantization draws per image; > 1 gives the importance-weighted estimate.")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON; - for standard "
                                                  "output.")] = None,
    batch_size: BatchSize = None,
    set_: Sets = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
) -> None:
    """Exact bits per dimension of a whole data split, with its standard error."""
    import torch

    from nfgen.datasets.loading import make_loader
    from nfgen.tasks.evaluate import check_likelihood, class_log_probs, conditional_bpd, evaluate_bpd

    with opts.user_errors():
        opts.in_range("--samples", samples, 1, 65536)
        opts.in_range("--batch-size", 1 if batch_size is None else batch_size, 1, 65536)
        opts.checked_split(split)
        check_device_name(device)
        t = opts.load_trained(ckpt, set_, device)
        model, cfg = t.model, t.cfg
        check_likelihood(model)  # before anything is written: a Gaussian-noise model has no bits/dim
        check_outputs({"--json": json_out}, overwrite)
        to_stdout = is_stdout(json_out)  # then the report goes to stderr
        data = t.split(split)
        loader = make_loader(data, batch_size or cfg.train.batch_size, shuffle=False,
                             num_workers=cfg.data.num_workers, pin_memory=False)
        torch.manual_seed(0)
        how = f"{samples} dequantization sample(s), {cfg.dequantization.kind}, n_bits={cfg.model.n_bits}"
        common = {"n_bits": cfg.model.n_bits, "dequantization": cfg.dequantization.kind,
                  "importance_samples": samples, "checkpoint": str(ckpt), "split": split}
        if model.num_classes:  # both: log p(x | y) with the true labels, and log p(x) = log mean_y p(x | y)
            log_probs, labels = class_log_probs(model, loader, samples, sys.stderr.isatty())
            c = conditional_bpd(log_probs, labels, model.dims)
            for r in (c.conditional, c.marginal):
                opts.finite(r.n_nonfinite, r.n_images)
            typer.echo(f"{split} bits/dim, conditional -log p(x | y) with the true labels: {c.conditional.bpd:.4f} "
                       f"± {c.conditional.stderr:.4f}\n{split} bits/dim, marginal -log p(x), p(x) = mean_y p(x | y) "
                       f"over {c.num_classes} classes: {c.marginal.bpd:.4f} ± {c.marginal.stderr:.4f}\n"
                       f"({c.conditional.n_images} images, {how})", err=to_stdout)
            record = {"conditional": {**opts.bpd_record(c.conditional), "means": "-log p(x | y), y the true label"},
                      "marginal": {**opts.bpd_record(c.marginal), "means": "-log p(x), p(x) = mean_y p(x | y) (uniform "
                                   "class prior)"},
                      "num_classes": c.num_classes, **common, "n_images": c.conditional.n_images}
        else:
            r = evaluate_bpd(model, loader, n_samples=samples, progress=sys.stderr.isatty())
            opts.finite(r.n_nonfinite, r.n_images)
            typer.echo(f"{split} bits/dim: {r.bpd:.4f} ± {r.stderr:.4f} ({r.n_images} images, {how})", err=to_stdout)
            record = {**opts.bpd_record(r), **common, "n_images": r.n_images}
        if json_out is not None:
            with opened(json_out) as f:
                f.write(json.dumps(record, indent=2) + "\n")


@app.command()
def interpolate(
    ckpt: Ckpt,
    pairs: Annotated[int, typer.Option(help="Rows: pairs of real images.")] = 4,
    steps: Annotated[int, typer.Option(help="Decoded points between (and including) the pair's latents.")] = 8,
    split: Annotated[str, typer.Option(help="Split the real images come from.")] = "test",
    out: Annotated[Path, typer.Option(help="PNG grid to write.")] = Path("interp.png"),
    spherical: Annotated[bool, typer.Option(help="Spherical instead of linear interpolation.")] = False,
    seed: Annotated[int, typer.Option(help="Chooses the image pairs.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Pairs encoded and decoded at a time.")] = 64,
    set_: Sets = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
) -> None:
    """Walk the latent space between pairs of real images, at every scale (a class-conditional
    model: each pair is two images of one class, encoded and decoded with that class)."""
    import torch

    from nfgen.datasets.labels import take
    from nfgen.tasks.generate import check_grid_size, same_class_pairs, save_grid
    from nfgen.tasks.generate import interpolate as interpolate_images

    with opts.user_errors():
        opts.in_range("--pairs", pairs, 1, 1024)
        opts.in_range("--steps", steps, 2, 1024)
        opts.in_range("--batch-size", batch_size, 1, 65536)
        opts.in_range("--seed", seed, 0, MAX_SEED)
        opts.checked_split(split)
        opts.image_path(out)
        check_device_name(device)
        t = opts.load_trained(ckpt, set_, device)
        model = t.model
        check_grid_size(pairs * (steps + 2), model.shape, steps + 2, "--pairs or --steps")
        check_outputs({"--out": out}, overwrite, pictures=("--out",))
        data = t.split(split)
        if len(data) < 2 * pairs:
            raise DataError(f"the {split} split has {len(data)} images; --pairs {pairs} needs {2 * pairs}")
        generator = torch.Generator().manual_seed(seed)
        labels = None
        if model.num_classes:  # a walk keeps its class: both ends of a pair from one class
            try:
                first, second = same_class_pairs(data.labels, pairs, generator)
            except ValueError as e:
                raise DataError(f"the {split} split: {e}") from None
            idx, labels = torch.cat([first, second]), data.labels[first]
        else:
            idx = torch.randperm(len(data), generator=generator)[: 2 * pairs]
        x, _ = take(data, idx.tolist())
        chunks = []
        for i in opts.progress(range(0, pairs, batch_size), "interpolate"):  # --batch-size pairs at a time
            part = slice(i, min(i + batch_size, pairs))
            chunks.append(interpolate_images(model, x[:pairs][part], x[pairs:][part], steps, spherical,
                                             labels=None if labels is None else labels[part]).cpu())
        rows = torch.cat(chunks)
        save_grid(rows.flatten(0, 1), opts.output_path(out), nrow=steps + 2)
        typer.echo(f"wrote {pairs} interpolations of {steps} steps to {out}")


@app.command()
def classify(
    ckpt: Ckpt,
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    samples: Annotated[int, typer.Option(help="Dequantization draws per image and class; > 1 gives importance-weighted "
                                         "likelihoods.")] = 1,
    out: Annotated[Path, typer.Option(help="Picture of the confusion matrix to write.")] = Path("confusion.png"),
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write accuracy, confusion matrix and each "
                                                  "image's posterior p(y | x) and true label as JSON; - for standard "
                                                  "output.")] = None,
    batch_size: BatchSize = None,
    set_: Sets = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
) -> None:
    """A class-conditional model as a classifier: argmax_y log p(x | y) (uniform class prior) on a
    split; accuracy and the confusion matrix, printed and drawn."""
    import torch

    from nfgen.datasets.loading import make_loader
    from nfgen.tasks.classify import classify as run_classifier
    from nfgen.tasks.classify import draw_confusion, format_confusion
    from nfgen.tasks.evaluate import check_likelihood

    with opts.user_errors():
        opts.in_range("--samples", samples, 1, 65536)
        opts.in_range("--batch-size", 1 if batch_size is None else batch_size, 1, 65536)
        opts.checked_split(split)
        opts.image_path(out)
        check_outputs({"--out": out, "--json": json_out}, overwrite, pictures=("--out",))
        check_device_name(device)
        t = opts.load_trained(ckpt, set_, device)
        model, cfg, names = t.model, t.cfg, t.class_names
        opts.conditional_only(model, "classify")
        check_likelihood(model)  # the classifier compares likelihoods: a Gaussian-noise model has none
        data = t.split(split)
        loader = make_loader(data, batch_size or cfg.train.batch_size, shuffle=False,
                             num_workers=cfg.data.num_workers, pin_memory=False)
        torch.manual_seed(0)
        result = run_classifier(model, loader, names, samples, sys.stderr.isatty())
        if not torch.isfinite(result.log_probs).all():
            raise NumericalError("some images gave a non-finite log p(x | y); the model is numerically broken on them")
        to_stdout = is_stdout(json_out)
        typer.echo(f"{split} accuracy: {result.accuracy:.4f} ({result.correct} of {len(result.labels)} images), "
                   f"Bayes classifier argmax_y log p(x | y) over {len(names)} classes, uniform prior, "
                   f"{samples} dequantization sample(s)\n{format_confusion(result)}", err=to_stdout)
        if json_out is not None:  # the numbers first: the picture is the part that may be degraded
            record = {"checkpoint": str(ckpt), "split": split, "importance_samples": samples, "class_prior": "uniform",
                      "class_names": names, "accuracy": result.accuracy, "n_images": len(result.labels),
                      "confusion": result.confusion().tolist(), "confusion_axes": "row: true class, column: predicted",
                      "images": result.records(opts.item_names(data))}
            with opened(json_out) as f:
                f.write(json.dumps(record, indent=2) + "\n")
        note = draw_confusion(result, opts.output_path(out), f"{ckpt}: {split}, accuracy {result.accuracy:.3f} "
                              f"({result.correct} of {len(result.labels)})")
        if note:
            typer.echo(f"note: {note}", err=True)
        typer.echo(f"confusion matrix picture: {out}", err=to_stdout)


@app.command()
def score(
    ckpt: Ckpt,
    split: Annotated[str | None, typer.Option(help="Score a split of the run's data: train or test (the default).")] = None,
    folder: Annotated[Path | None, typer.Option(help="Or score every image in this folder (recursively).")] = None,
    in_: Annotated[str | None, typer.Option("--in", help="With --ood: the in-distribution set, a split or a "
                                            "folder (default test).")] = None,
    ood: Annotated[list[Path] | None, typer.Option(help="A folder of out-of-distribution images (repeatable): "
                                                   "report how well each score tells it from --in.")] = None,
    samples: Annotated[int, typer.Option(help="Dequantization draws per image; > 1 gives the importance-weighted bits/dim.")] = 1,
    codec: Annotated[list[str] | None, typer.Option(help=f"Lossless codec of the complexity correction (repeatable): "
                                                    f"{', '.join(CODECS)}.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write the per-image rows here (default: standard "
                                                 "output when scoring one set).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the rows (one set) or the report (--ood) as "
                                                  "JSON; - for standard output.")] = None,
    hist: Annotated[Path | None, typer.Option(help="With --ood: the histogram picture (default score_hist.png).")] = None,
    batch_test_size: Annotated[int, typer.Option(help="Batch size of the batch typicality test (with --ood).")] = 10,
    stats_images: Annotated[int, typer.Option(help="Training images the typicality statistics use (0: all).")] = 0,
    batch_size: BatchSize = None,
    set_: Sets = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
) -> None:
    """Anomaly scores of images (higher = more anomalous): bits/dim, complexity-corrected bits/dim,
    typicality; with --ood, AUROC / AUPR / FPR@95 of each against --in, and a histogram."""
    from torch.utils.data import Dataset

    from nfgen.tasks.evaluate import check_likelihood
    from nfgen.tasks.ood_metrics import histogram
    from nfgen.tasks.score import format_report, ood_report, score_names, score_sets, write_rows

    with opts.user_errors():
        opts.in_range("--samples", samples, 1, 65536)
        opts.in_range("--batch-size", 1 if batch_size is None else batch_size, 1, 65536)
        opts.in_range("--batch-test-size", batch_test_size, 1, 65536)
        opts.in_range("--stats-images", stats_images, 0, 2**31)
        codecs = list(dict.fromkeys(codec or ["png"]))
        for c in codecs:
            if c not in CODECS:
                raise ConfigError(f"--codec must be one of {', '.join(CODECS)}, got {c!r}")
        wanted, hist = opts.score_wanted(split, folder, in_, ood, hist)
        check_outputs({"--csv": csv_out, "--json": json_out, "--hist": hist}, overwrite, pictures=("--hist",))
        to_stdout = [p for p in (csv_out, json_out) if is_stdout(p)]
        check_device_name(device)
        t = opts.load_trained(ckpt, set_, device)
        model, cfg = t.model, t.cfg
        check_likelihood(model)  # scores are built on bits/dim: a Gaussian-noise model has none
        sets: dict[str, Dataset] = {}
        for where in wanted:  # every image listed and its header read before any work
            name, data = opts.image_set(t, where)
            if getattr(data, "skipped", None):  # said, not silently dropped
                typer.echo(f"note: {where}: {len(data.skipped)} file(s) that are not images skipped, e.g. "
                           f"{data.skipped[0]}", err=True)
            while name in sets:
                name += "+"
            sets[name] = data
        stats, measured = score_sets(model, t.split("train"), ckpt, t.sha256, sets, codecs, samples, stats_images,
                                     batch_size or cfg.train.batch_size, cfg.data.num_workers, sys.stderr.isatty(),
                                     lambda m: typer.echo(m, err=True))
        header = {"checkpoint": str(ckpt), "importance_samples": samples, "n_bits": cfg.model.n_bits,
                  "codecs": codecs, "train_mean_bpd": stats.mean, "scores": score_names(codecs)}
        if hist is not None:  # comparing sets: the table (on stderr when stdout carries data), JSON, picture
            in_name = next(iter(measured))
            report = {**header, **ood_report(measured, in_name, stats, codecs, batch_test_size)}
            typer.echo(format_report(report), err=bool(to_stdout))
            histogram({s: m.columns(stats.mean) for s, m in measured.items()}, in_name, score_names(codecs),
                      opts.output_path(hist), f"{ckpt}: {in_name} against {len(sets) - 1} other set(s)")
            if json_out is not None:
                with opened(json_out) as f:
                    f.write(json.dumps(report, indent=2) + "\n")
            typer.echo(f"histogram: {hist}", err=True)
        elif json_out is not None:
            with opened(json_out) as f:
                write_rows(measured, stats.mean, f, True, header)
        if csv_out is not None or (hist is None and not to_stdout):  # one set: CSV on stdout by default
            with opened(csv_out) as f:
                write_rows(measured, stats.mean, f, False, header)


@app.command()
def export(
    ckpt: Ckpt,
    out: Annotated[Path, typer.Option(help="Folder to write model.safetensors, config.json and README.md into.")],
    ema: Annotated[bool, typer.Option(help="Export the EMA weights where the checkpoint has them.")] = True,
    push_to_hub: Annotated[str | None, typer.Option(help="Also upload the folder to this Hugging Face Hub model "
                                                    "repository (user/name; needs pip install 'nfgen\\[hub]').")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the files of an earlier export in --out.")] = False,
) -> None:
    """Write a checkpoint's model as safetensors weights plus its config and class names, for
    nfgen.load(DIR) and the Hugging Face Hub."""
    from nfgen.training.export import export_model, hub_api
    from nfgen.training.export import push_to_hub as upload

    with opts.user_errors():
        api = hub_api() if push_to_hub else None  # a missing extra fails before anything is written
        files = export_model(ckpt, out, overwrite, ema)
        sizes = ", ".join(f"{p.name} {p.stat().st_size:,} bytes" for p in files)
        typer.echo(f"exported {ckpt} to {out}: {sizes}")
        if push_to_hub:
            upload(out, push_to_hub, api)
            typer.echo(f"uploaded to https://huggingface.co/{push_to_hub}")


@app.command()
def check(
    ckpt: Annotated[Path | None, typer.Option(help="Checkpoint to examine.")] = None,
    config: Annotated[str | None, typer.Option(help="Or a YAML config: examine a freshly built model "
                                               "(actnorm initialised on random images).")] = None,
    set_: Sets = None,
    n: Annotated[int, typer.Option(help="Model samples the blocks are measured on.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Device = "auto",
) -> None:
    """Numerical health of every flow block: round trips, log-dets, conditioning, scales, NaNs."""
    from nfgen.tasks.doctor import diagnose, format_report, fresh_model, verdict

    with opts.user_errors():
        if (ckpt is None) == (config is None):
            raise ConfigError("give exactly one of --ckpt FILE or --config FILE")
        opts.in_range("--n", n, 1, 4096)
        opts.in_range("--seed", seed, 0, MAX_SEED)
        check_device_name(device)
        if ckpt is not None:
            model, _ = opts.trained(ckpt, set_, device)
        else:
            model = fresh_model(load_config(config, set_), seed, opts.torch_device(device))
        report = diagnose(model, n, seed)
    typer.echo(format_report(report))
    typer.echo(verdict(report))
    raise typer.Exit(0 if report.healthy else 1)


@app.command()
def density2d(
    config: Annotated[str, typer.Option(help="YAML config: a path, or a shipped name such as ring_planar.yaml.")],
    set_: Sets = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default runs/<name>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start over in a run folder that holds a run.")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Fit a 2-D flow to a target density (reverse KL) or to points (likelihood); write pictures and numbers."""
    from nfgen.density2d.config import load_config as load_2d
    from nfgen.density2d.train import train_density2d

    with opts.user_errors():
        cfg = load_2d(config, set_)
        folder = Path(run_dir or cfg.run_dir or Path("runs") / cfg.name)
        s = train_density2d(cfg, folder, overwrite=overwrite, progress=progress)
        if s["objective"] == "energy":
            typer.echo(f"done: log Z {s['log_z_quadrature']:.4f} (quadrature); ELBO {s['elbo']:.4f} ± {s['elbo_stderr']:.4f}, "
                       f"importance-weighted {s['log_z_importance']:.4f} ± {s['log_z_importance_stderr']:.4f}; "
                       f"reverse KL {s['reverse_kl']:.4f}; pictures in {folder / 'figures'}")
        else:
            true = f" (true density: {s['true_test_log_likelihood']:.4f})" if "true_test_log_likelihood" in s else ""
            typer.echo(f"done: test log-likelihood {s['test_log_likelihood']:.4f} ± {s['test_log_likelihood_stderr']:.4f}"
                       f"{true}; pictures in {folder / 'figures'}")


app.command("config")(config_verb)
app.add_typer(data_app, name="data")
app.command("eval-fid")(eval_fid)


def main() -> None:
    app()
