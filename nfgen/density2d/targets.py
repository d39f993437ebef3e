"""Two-dimensional targets: unnormalised energies (reverse KL) and samplers (maximum likelihood).

An energy target gives ``U(z)``, the unnormalised density being ``p~(z) = exp(-U(z))``: the ring
and the four test energies of Rezende & Mohamed (2015, table 1). A sample target draws points:
FFJORD's toy data sets (Grathwohl et al., 2019) and a user's CSV. Where a sampler's density is
known in closed form (the 8 Gaussians, the checkerboard) it is given, so a fit can be compared
with the truth. Each target names ``box``: the half-width of a square ``[-box, box]^2`` holding
all its mass but a negligible amount (pictures and quadrature use it).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nfgen.core.user_input import parser
from nfgen.density2d.expression import compile_energy

Energy = Callable[[Tensor], Tensor]  # points [N, 2] -> U [N]
Sampler = Callable[[int, torch.Generator], Tensor]  # (n, generator) -> points [n, 2]


@dataclass(frozen=True)
class EnergyTarget:
    name: str
    energy: Energy
    box: float

    def log_unnormalized(self, x: Tensor) -> Tensor:
        return -self.energy(x)


@dataclass(frozen=True)
class SampleTarget:
    """Training points drawn by ``batch``; a fixed test set; the true log-density if known."""

    name: str
    batch: Sampler
    test: Tensor
    box: float
    log_density: Energy | None = None


# ------------------------------------------------------------------------------ energies
def _log_two_bumps(a: Tensor, b: Tensor) -> Tensor:
    """``log(exp(-a^2 / 2) + exp(-b^2 / 2))``, without underflow."""
    return torch.logaddexp(-0.5 * a**2, -0.5 * b**2)


def ring(z: Tensor) -> Tensor:
    """A ring of radius 2 and width 0.4: ``U = ((|z| - 2) / 0.4)^2 / 2`` (the first term of U1)."""
    return 0.5 * ((z.norm(dim=1) - 2) / 0.4) ** 2


def u1(z: Tensor) -> Tensor:
    return ring(z) - _log_two_bumps((z[:, 0] - 2) / 0.6, (z[:, 0] + 2) / 0.6)


def _w1(z: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _walls(z: Tensor) -> Tensor:
    """U2-U4 do not grow along z1, so exp(-U) has infinite mass on the plane; zero inside the
    paper's square |z1| <= 4, this adds Gaussian walls of width 0.25 outside it."""
    return 0.5 * (torch.relu(z[:, 0].abs() - 4) / 0.25) ** 2


def u2(z: Tensor) -> Tensor:
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2 + _walls(z)


def u3(z: Tensor) -> Tensor:
    w2 = 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)
    return -_log_two_bumps((z[:, 1] - _w1(z)) / 0.35, (z[:, 1] - _w1(z) + w2) / 0.35) + _walls(z)


def u4(z: Tensor) -> Tensor:
    w3 = 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)
    return -_log_two_bumps((z[:, 1] - _w1(z)) / 0.4, (z[:, 1] - _w1(z) + w3) / 0.35) + _walls(z)


ENERGIES: dict[str, tuple[Energy, float]] = {
    "ring": (ring, 5.0), "u1": (u1, 5.0), "u2": (u2, 5.5), "u3": (u3, 5.5), "u4": (u4, 5.5),
}


# ------------------------------------------------------------------------------ samplers
def _randn(n: int, g: torch.Generator) -> Tensor:
    return torch.randn(n, 2, generator=g)


def moons(n: int, g: torch.Generator) -> Tensor:
    """Two interleaved half circles with Gaussian noise 0.1 (scikit-learn's ``make_moons``),
    scaled as FFJORD does (``2 x + (-1, -0.2)``)."""
    t = math.pi * torch.rand(n, generator=g)
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return 2 * (torch.stack([x, y], 1) + 0.1 * _randn(n, g)) + torch.tensor([-1.0, -0.2])


def circles(n: int, g: torch.Generator) -> Tensor:
    """Two concentric circles (radii 3 and 1.5) with noise 0.08 * 3 (scikit-learn's
    ``make_circles(factor=0.5, noise=0.08)`` times 3, as FFJORD)."""
    t = 2 * math.pi * torch.rand(n, generator=g)
    radius = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, 0.5)
    return 3 * (radius[:, None] * torch.stack([torch.cos(t), torch.sin(t)], 1) + 0.08 * _randn(n, g))


_8G_SCALE, _8G_STD = 4 / 1.414, 0.5 / 1.414  # FFJORD: centres at radius 4, std 0.5, then / 1.414


def _eight_centres() -> Tensor:
    angles = torch.arange(8) * (math.pi / 4)
    return _8G_SCALE * torch.stack([torch.cos(angles), torch.sin(angles)], 1)


def eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    k = torch.randint(0, 8, (n,), generator=g)
    return _eight_centres()[k] + _8G_STD * _randn(n, g)


def eight_gaussians_log_density(x: Tensor) -> Tensor:
    d2 = ((x[:, None, :] - _eight_centres().to(x)[None]) ** 2).sum(-1)
    log_normal = -0.5 * d2 / _8G_STD**2 - math.log(2 * math.pi * _8G_STD**2)
    return torch.logsumexp(log_normal, dim=1) - math.log(8)


def checkerboard(n: int, g: torch.Generator) -> Tensor:
    """FFJORD's checkerboard: uniform on 8 of the 16 squares of side 2 in ``[-4, 4)^2``."""
    x1 = 4 * torch.rand(n, generator=g) - 2
    x2 = torch.rand(n, generator=g) - 2 * torch.randint(0, 2, (n,), generator=g) + torch.floor(x1) % 2
    return 2 * torch.stack([x1, x2], 1)


def checkerboard_log_density(x: Tensor) -> Tensor:
    """``-log 32`` on the 8 squares (area 32), ``-inf`` elsewhere."""
    u = x / 2
    inside = (u >= -2).all(1) & (u < 2).all(1) & ((torch.floor(u).sum(1) % 2) == 0)
    return torch.where(inside, -math.log(32.0), -math.inf).to(x.dtype)


def pinwheel(n: int, g: torch.Generator) -> Tensor:
    """FFJORD's pinwheel: 5 arms, radial std 0.3, tangential std 0.1, rate 0.25."""
    arm = torch.randint(0, 5, (n,), generator=g)
    f = _randn(n, g) * torch.tensor([0.3, 0.1])
    f[:, 0] += 1
    angle = arm * (2 * math.pi / 5) + 0.25 * torch.exp(f[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    return 2 * torch.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], 1)


SAMPLERS: dict[str, tuple[Sampler, Energy | None, float]] = {
    "moons": (moons, None, 4.0),
    "circles": (circles, None, 4.0),
    "8gaussians": (eight_gaussians, eight_gaussians_log_density, 4.5),
    "checkerboard": (checkerboard, checkerboard_log_density, 4.5),
    "pinwheel": (pinwheel, None, 4.5),
}
MAX_BOX = 1e4  # the largest square half-width, given (target.box) or derived from a CSV's points
USER = ("expression", "csv")  # a user's energy formula, a user's file of points
TARGET_NAMES = (*ENERGIES, *SAMPLERS, *USER)


def is_energy(name: str) -> bool:
    return name in ENERGIES or name == "expression"


class TargetError(ValueError):
    """A user's target (formula or CSV file) that cannot be used; the message says why."""


def read_points(path: str | Path, limit: int = 10_000_000) -> Tensor:
    """Points ``[N, 2]`` from a CSV file of two numeric columns (a header line is skipped)."""
    path = Path(path)
    rows: list[tuple[float, float]] = []
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first cell.
        with path.open(newline="", encoding="utf-8-sig") as f:
            for i, row in enumerate(csv.reader(f)):
                cells = [c.strip() for c in row if c.strip()]
                if not cells:
                    continue
                try:
                    values = [float(c) for c in cells]
                except ValueError:
                    if i == 0 and not rows:
                        continue  # a header
                    raise TargetError(f"{path}: line {i + 1} is not two numbers: {','.join(row)[:60]!r}") from None
                if len(values) != 2 or not all(math.isfinite(v) for v in values):
                    raise TargetError(f"{path}: line {i + 1} must hold two finite numbers (x, y), got {','.join(row)[:60]!r}")
                rows.append((values[0], values[1]))
                if len(rows) > limit:
                    raise TargetError(f"{path}: more than {limit} points; subsample it")
    except UnicodeDecodeError:
        raise TargetError(f"{path} is not a text file; give a CSV of x,y rows") from None
    except OSError as e:
        raise TargetError(f"cannot read {path}: {e.strerror or e}") from None
    except csv.Error as e:
        raise TargetError(f"{path}: not a CSV file ({e})") from None
    return torch.tensor(rows, dtype=torch.float64)


def build_target(name: str, expression: str = "", csv_path: str = "", box: float = 0.0, test_points: int = 10_000,
                 test_fraction: float = 0.2, seed: int = 0) -> EnergyTarget | SampleTarget:
    """The target called ``name`` (``box`` 0: its own square). Synthetic test points are drawn
    from their own seed (``seed + 1``), never from the training stream."""
    if name in ENERGIES:
        energy, own_box = ENERGIES[name]
        return EnergyTarget(name, energy, box or own_box)
    if name == "expression":
        return EnergyTarget(name, compile_energy(expression), box)
    if name == "csv":
        return csv_target(csv_path, box, test_fraction, seed)
    sampler, log_density, own_box = SAMPLERS[name]
    test = sampler(test_points, torch.Generator().manual_seed(seed + 1))
    return SampleTarget(name, sampler, test, box or own_box, log_density)


@parser("target.csv")
def csv_target(path: str | Path, box: float = 0.0, test_fraction: float = 0.2, seed: int = 0) -> SampleTarget:
    """A user's CSV of points, a seeded ``test_fraction`` of them held out; ``box`` 0: a square
    10% wider than the points reach, which must be at most ``MAX_BOX`` like a ``target.box``."""
    points = read_points(path)
    n_test = int(round(test_fraction * len(points)))
    if n_test < 1 or len(points) - n_test < 2:
        raise TargetError(f"{path} has {len(points)} points: too few to hold out "
                          f"{test_fraction:g} of them for testing and train on the rest")
    order = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))
    train, test = points[order[n_test:]], points[order[:n_test]]
    extent = float(points.abs().max())
    if box == 0 and 1.1 * extent > MAX_BOX:
        raise TargetError(f"{path}: a point lies at {extent:.4g} from the origin, so the square holding the points "
                          f"would be wider than target.box's limit {MAX_BOX:g}: rescale the data")
    own = box or max(math.ceil(1.1 * extent * 2) / 2, 0.5)  # a 10% margin, rounded up to a half

    def draw(n: int, g: torch.Generator) -> Tensor:
        return train[torch.randint(0, len(train), (n,), generator=g)]

    return SampleTarget("csv", draw, test, own)
