"""``nfgen export``: a trained model as ``model.safetensors`` + ``config.json`` (+ a model card).

An export holds what sampling and likelihoods need and nothing of training (no optimizer, RNG or
progress), in formats every tool reads: safetensors (no pickle, so loading runs no code) for
the weights, JSON for the config and the class names. ``read_export`` rebuilds the model from it
through ``build_model``, the one way a model is rebuilt, so the export samples bit for bit what
its checkpoint does. ``push_to_hub`` uploads the folder to the Hugging Face Hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save

from nfgen import __version__
from nfgen.config.schema import Config
from nfgen.core.atomic import atomic_write, atomic_write_text
from nfgen.errors import CheckpointError, MissingExtraError, OutputError
from nfgen.model.image_flow import ImageFlow, build_model
from nfgen.training.checkpoint import class_names_of, config_of, model_from_checkpoint

FORMAT = 1  # bump when the export layout changes; older nfgen refuses newer exports
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
FILES = (WEIGHTS, CONFIG, CARD)


def _card(cfg: Config, names: list[str] | None, metric: str) -> str:
    m = cfg.model
    classes = f"{len(names)} classes ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" if names else "unconditional"
    return (f"---\nlibrary_name: nfgen\ntags:\n- normalizing-flow\n- {m.arch}\n- image-generation\n---\n\n"
            f"# {cfg.name}\n\nA {m.arch} normalizing flow over {'x'.join(map(str, m.image_shape))} images "
            f"({m.n_bits}-bit), {classes}, trained with nfgen (test metric: {metric}).\n\n"
            "```python\nimport nfgen\n\nmodel = nfgen.load(\"path/to/this/folder\")\n"
            "images = model.sample(16, temperature=0.7)  # uint8 [16, C, H, W]\n```\n")


def export_model(ckpt: str | Path, out: str | Path, overwrite: bool = False, ema: bool = True) -> list[Path]:
    """Write ``ckpt``'s model (its EMA weights where it has them and ``ema``) into the folder
    ``out``; refuses to replace an earlier export's files unless ``overwrite``. Returns the files."""
    ckpt, out = Path(ckpt), Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; give a folder to export into")
    held = [name for name in FILES if (out / name).exists()]
    if held and not overwrite:
        raise OutputError(f"{out} already holds {', '.join(held)}; pass --overwrite to replace them")
    model, cfg, state = model_from_checkpoint(ckpt, ema=ema)
    names = class_names_of(state, cfg, ckpt) if cfg.model.num_classes else None
    progress = state.get("progress") or {}
    record = {
        "nfgen_export": FORMAT, "nfgen_version": __version__,
        "weights": "ema" if ema and state.get("ema") is not None else "model",
        "step": progress.get("step"), "metric": state.get("metric", "bpd"),
        "class_names": names, "config": cfg.to_dict(),
    }
    out.mkdir(parents=True, exist_ok=True)
    # Contiguous copies: channels-last weights are stored in the standard order (load copies them back).
    weights = save({k: v.contiguous() for k, v in model.state_dict().items()}, metadata={"format": "pt"})
    atomic_write(out / WEIGHTS, lambda f: f.write(weights))
    atomic_write_text(out / CONFIG, json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / CARD, _card(cfg, names, record["metric"]))
    return [out / name for name in FILES]


def read_export(folder: str | Path, device: str | torch.device = "cpu") -> tuple[ImageFlow, Config, list[str] | None]:
    """The model of an export folder (evaluation mode, on ``device``), its config and class names."""
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"{folder} is not an nfgen export: it needs {CONFIG} and {WEIGHTS} (write one with "
                              "`nfgen export --ckpt FILE --out DIR`)")
    try:
        record = json.loads(path.read_text())
        version = int(record["nfgen_export"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path} is not the config.json of an nfgen export") from None
    if version > FORMAT:
        raise CheckpointError(f"{folder} was exported by a newer nfgen ({record.get('nfgen_version')}, format "
                              f"{version}); upgrade nfgen to read it")
    cfg = config_of(record, path)
    names = class_names_of(record, cfg, path) if cfg.model.num_classes else None
    model = build_model(cfg)
    try:
        load_model(model, str(folder / WEIGHTS), strict=True)
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:  # a damaged file, or other weights
        raise CheckpointError(f"{folder / WEIGHTS} does not fit the model its config describes "
                              f"({str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval(), cfg, names


def hub_api() -> Any:
    """``huggingface_hub.HfApi()``, or a one-line error that says how to install it."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise MissingExtraError("--push-to-hub needs huggingface_hub: pip install 'nfgen[hub]'") from None
    return HfApi()


def push_to_hub(folder: str | Path, repo: str, api: Any = None, private: bool = False) -> Any:
    """Upload an export folder's files to the Hub model repository ``repo`` (created if needed).
    ``api`` is a ``huggingface_hub.HfApi`` (tests pass a stand-in); logging in is the user's
    (``huggingface-cli login`` or ``HF_TOKEN``)."""
    api = api if api is not None else hub_api()
    api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", allow_patterns=list(FILES),
                             commit_message=f"nfgen export ({__version__})")
