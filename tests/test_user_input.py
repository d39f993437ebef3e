"""Class D of the second red team: every parser of user input (registered with
``nfgen.core.user_input.parser``) fed the config fuzz's hostile values and more: each value is parsed
or refused with one line, never a traceback. And the trials themselves, end to end."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from archs import tiny_model
from test_hostile_values import HOSTILE
from typer.testing import CliRunner

import nfgen.density2d.targets  # noqa: F401  (registers its parsers, as the density2d verb imports it)
from nfgen.cli.app import app
from nfgen.config.schema import config_from_dict
from nfgen.core.user_input import PARSERS
from nfgen.model.image_flow import build_model
from nfgen.training.checkpoint import save_checkpoint

runner = CliRunner()
# The config fuzz's values as a user types them, and what broke parsers before: digits that
# str.isdigit() accepts and int() refuses, a sign twice, numbers too large for a float or an int,
# control and unpaired surrogate characters, a byte-order mark, very long text.
TEXTS = sorted({*(str(v) for v in HOSTILE), "³", "①", "٣", "--3", "-3", "+1", " 1 ", "0x10", "1_0", "9" * 401,
                "1e308", "-1e308", "1e309", "2**2000", "9" * 5000, "\x00", "\ud800", "\ufeff1", "", " ", "null",
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
                "a" * 100_000, "1,1", "nan,nan", "1e308,1e308", "\ufeff1,2", "((" * 300 + "z1" + "))" * 300,
                "z1**" + "9" * 401, "exp(z1)**1e308", "cuda:³", "cuda:-1", "1h30m" * 100, "99999999999999999999d"})


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


# How each registered parser is fed one text. A parser missing here fails the test below.
CALLS: dict[str, Callable[[str, Path], object]] = {
    "--label": lambda s, tmp: PARSERS["--label"](s, ["0", "1", "2"], True),
    "--set": lambda s, tmp: PARSERS["--set"](f"train.lr={s}"),
    "config file": lambda s, tmp: PARSERS["config file"](_write(tmp, "c.yaml", f"train:\n  lr: {s}\n")),
    "device": lambda s, tmp: PARSERS["device"](s),
    "duration": lambda s, tmp: PARSERS["duration"](s),
    "target.expression": lambda s, tmp: PARSERS["target.expression"](s),
    "target.csv": lambda s, tmp: PARSERS["target.csv"](_write(tmp, "p.csv", "x,y\n1,2\n3,4\n5,6\n" + f"{s}\n" * 3)),
}


def test_every_parser_has_a_fuzz_case():
    assert set(PARSERS) == set(CALLS)


@pytest.mark.parametrize("what", sorted(CALLS))
def test_every_parser_of_user_input_parses_or_refuses_in_one_line(tmp_path, what):
    for text in TEXTS:
        try:
            CALLS[what](text, tmp_path)
        except Exception as e:  # noqa: BLE001 - what matters is which errors escape
            assert type(e).__module__.startswith("nfgen."), f"{what} {text[:40]!r}: {type(e).__name__}: {e}"
            message = str(e)
            assert message.strip() and len(message.splitlines()) == 1, f"{what} {text[:40]!r}: {message!r}"


def test_labels_are_ascii_numbers_or_names():
    label = PARSERS["--label"]
    assert label("2", ["a", "b", "c"]) == 2 and label("b", ["a", "b", "c"]) == 1
    for text in ("³", "①", "٣", "--3", "-1", "3", "+1", "0x1"):
        with pytest.raises(ValueError, match="is not a class of this model"):
            label(text, ["a", "b", "c"])


# --- the trials, end to end ------------------------------------------------------------------------

@pytest.fixture
def conditional(tmp_path) -> Path:
    cfg = config_from_dict({"model": {**tiny_model("glow", (1, 8, 8)), "num_classes": 4}})
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "model": build_model(cfg).state_dict()})
    return ckpt


@pytest.mark.parametrize("label", ["³", "①", "--3", "٣", "9" * 401])
def test_sample_labels_that_int_refuses_are_one_line(conditional, tmp_path, label):
    out = tmp_path / "s.png"
    result = runner.invoke(app, ["sample", "--ckpt", str(conditional), "--device", "cpu", "--out", str(out),
                                 f"--label={label}", "--n", "4"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "is not a class of this model" in lines[0] and not out.exists()


def _density2d(tmp_path: Path, *sets: str):
    return runner.invoke(app, ["density2d", "--config", "ring_planar", "--run-dir", str(tmp_path / "run"),
                               "--no-progress", "--set", "train.max_steps=2", "--set", "eval.samples=200",
                               "--set", "eval.quadrature=50", "--set", "eval.grid=20",
                               *(a for s in sets for a in ("--set", s))])


@pytest.mark.parametrize("case", ["digits", "overflow", "csv-1e308"])
def test_density2d_numbers_too_large_are_one_line(tmp_path, case):
    if case == "csv-1e308":
        points = _write(tmp_path, "p.csv", "".join(f"{i},{i % 3}\n" for i in range(20)) + "1e308,0\n")
        sets = ["target.name=csv", f"target.csv={points}"]
    else:
        number = "9" * 401 if case == "digits" else "1e400"
        sets = ["target.name=expression", "target.box=4", f"target.expression=z1**2 + z2**2 + {number}"]
    result = _density2d(tmp_path, *sets)
    assert result.exit_code in (1, 2), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "too large" in lines[0] or "wider than target.box" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_csv_byte_order_mark_does_not_eat_the_first_point(tmp_path):
    from nfgen.density2d.targets import read_points

    rows = "1.5,2.5\n3,4\n5,6\n"
    plain, marked = _write(tmp_path, "a.csv", rows), tmp_path / "b.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + rows.encode())
    assert torch.equal(read_points(marked), read_points(plain)) and len(read_points(marked)) == 3
    with_header = tmp_path / "c.csv"
    with_header.write_bytes(b"\xef\xbb\xbfx,y\n" + rows.encode())
    assert torch.equal(read_points(with_header), read_points(plain))
    assert read_points(plain)[0].tolist() == [1.5, 2.5] and math.isfinite(float(read_points(plain).sum()))


def test_the_boundary_turns_pythons_own_errors_into_one_line_and_lets_nfgens_through():
    from nfgen.config.schema import ConfigError
    from nfgen.core.user_input import parser
    from nfgen.errors import DataError

    @parser("--test-only")
    def parse(text: str) -> object:
        if text == "data":
            raise DataError("a message of nfgen's own")
        return {"int": int, "float": lambda s: float(10**400), "deep": lambda s: parse(s)}[text](text)

    try:
        for text, kind in (("int", ConfigError), ("float", ConfigError), ("data", DataError), ("missing", ConfigError)):
            with pytest.raises(kind) as e:
                parse(text)
            assert len(str(e.value).splitlines()) == 1 and (kind is DataError or str(e.value).startswith("--test-only: "))
    finally:
        del PARSERS["--test-only"]
