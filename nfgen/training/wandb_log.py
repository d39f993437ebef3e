"""Optional Weights & Biases mirror of a run's scalars and sample grids (``train.wandb_project``).

Installed with ``pip install 'nfgen[wandb]'``. The W&B run's id is kept in ``<run>/wandb_id``,
so a resumed nfgen run continues the same W&B run. Nothing here may touch the training RNGs
(a resumed run is bitwise the uninterrupted one): the id comes from ``secrets``, and
``wandb.init`` runs with the Python and torch generators saved and restored around it.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from nfgen.config.schema import Config
from nfgen.errors import MissingExtraError

ID_FILE = "wandb_id"


def import_wandb() -> ModuleType:
    """The ``wandb`` module, or a one-line error that says how to install it."""
    try:
        import wandb
    except ImportError:
        raise MissingExtraError("train.wandb_project needs Weights & Biases: pip install 'nfgen[wandb]' "
                                "(or remove train.wandb_project)") from None
    return wandb


class WandbLog:
    """Mirrors ``RunLogger``'s scalars and images to one W&B run; ``module`` is ``wandb`` (tests
    pass a stand-in). The run starts at the first write, like the TensorBoard file. Any failure
    of W&B (no login, no network) is raised as an ``OSError``: the logger's side-write policy
    warns once and training goes on without the mirror."""

    what = "Weights & Biases log"

    def __init__(self, cfg: Config, run_dir: Path, module: ModuleType | Any | None = None) -> None:
        t = cfg.train
        self.module = module if module is not None else import_wandb()
        self.cfg, self.run_dir = cfg, run_dir
        self.project, self.entity, self.name = t.wandb_project, t.wandb_entity, t.wandb_run_name
        self.run: Any = None
        self.path = run_dir

    def _call(self, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as e:  # wandb's errors have no common base; none may stop training
            raise OSError(f"{type(e).__name__}: {e}".splitlines()[0]) from None

    def _start(self) -> Any:
        if self.run is None:
            id_file = self.run_dir / ID_FILE
            run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(8)
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id + "\n")
            state = random.getstate(), torch.get_rng_state()
            try:
                self.run = self.module.init(project=self.project, entity=self.entity, name=self.name or self.cfg.name,
                                            id=run_id, resume="allow", dir=str(self.run_dir),
                                            config=self.cfg.to_dict())
            finally:
                random.setstate(state[0])
                torch.set_rng_state(state[1])
        return self.run

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._call(lambda: self._start().log(dict(values), step=step))

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        # [3, H, W] floats in [0, 1] -> an HxWx3 uint8 array, what wandb.Image takes.
        array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        self._call(lambda: self._start().log({tag: self.module.Image(array)}, step=step))

    def close(self) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            self._call(run.finish)
