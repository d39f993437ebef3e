"""One policy for every write a training run makes besides its final checkpoint.

Periodic checkpoints, ``best.pt``, sample grids and TensorBoard events are side writes: when one
fails (disk full, permissions, a vanished mount) the run warns once, naming the path, and goes
on; the previous file is intact because checkpoints are written atomically. Only the final
``last.pt`` (at ``max_steps`` or on a stop signal) must succeed, and its failure is an error.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from nfgen.errors import CheckpointError


class SideWrites:
    """Runs side writes under the policy above; one instance per run, shared by the trainer and
    its logger. ``warn`` receives each warning line (default: stderr, above the progress bar)."""

    def __init__(self, warn: Callable[[str], None] | None = None) -> None:
        self.warn = warn or (lambda line: tqdm.write(line, file=sys.stderr))
        self.failing: set[str] = set()  # kinds of write whose last attempt failed

    def attempt(self, what: str, path: Path, write: Callable[[], object]) -> bool:
        """Run ``write``; on failure warn (once until that kind of write succeeds again) and
        return False instead of raising."""
        try:
            write()
        except (OSError, CheckpointError) as e:
            if what not in self.failing:
                self.failing.add(what)
                if isinstance(e, CheckpointError):  # its message already names the file
                    self.warn(f"warning: {e}; training goes on")
                else:
                    where = e.filename or path
                    self.warn(f"warning: could not write {what} {where}: {e.strerror or e}; training goes on")
            return False
        self.failing.discard(what)
        return True

    def quiet(self) -> SideWrites:
        """A copy under the same policy that warns nobody and shares no failures: for trial writes
        (the budget's timing of the final phase), whose failure is reported when the real write is
        due."""
        twin = copy.copy(self)
        twin.warn, twin.failing = (lambda line: None), set()
        return twin
