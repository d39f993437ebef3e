#!/usr/bin/env bash
# What `pip install nfgen` gives a user, checked end to end (CI: `make wheel-check`, after the tests):
# build the wheel, install it into a fresh virtual environment, and from an empty folder outside
# the repository run --version, `nfgen data digits`, a short quickstart training (the shipped
# config found by its bare name) and `nfgen sample`.
#
#   bash scripts/wheel_check.sh [PYTHON]     # PYTHON: the project's venv python (default .venv/bin/python)
#
# The fresh environment reuses the project environment's installed packages (torch, ...) through a
# .pth file instead of downloading them again; nfgen itself must come from the wheel, and the
# script fails if it does not. Needs no network beyond the package index (the wheel's build
# backend, setuptools, is fetched by pip's isolated build).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${1:-.venv/bin/python}"
[[ "$py" = /* ]] || py="$repo/$py"  # absolute, but not resolved: a venv's python is a symlink to the base one
tmp="$(mktemp -d "${TMPDIR:-/tmp}/nfgen-wheel.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
started=$SECONDS
step() { printf '\n== [%3d s] %s\n' "$((SECONDS - started))" "$*"; }

step "build the wheel"
# From a copy of the files git tracks (and new ones it does not ignore), as a clean clone would
# build: nothing stray in the checkout reaches the wheel, and the build leaves no build/ there.
"$py" - "$repo" "$tmp/src" <<'PY'
import shutil, subprocess, sys
from pathlib import Path
repo, copy = Path(sys.argv[1]), Path(sys.argv[2])
listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                        capture_output=True, check=True).stdout.decode().split("\0")
for name in filter(None, listed):
    if (repo / name).is_file():  # a file deleted but not yet committed is listed and absent
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, copy / name)
PY
"$py" -m pip wheel "$tmp/src" --no-deps --quiet --wheel-dir "$tmp/dist"
wheel="$(ls "$tmp"/dist/nfgen-*.whl)"
echo "$(basename "$wheel")"
"$py" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
needed = ["nfgen/py.typed", "nfgen/configs/quickstart.yaml", "nfgen/configs/density2d/ring_planar.yaml"]
missing = [n for n in needed if n not in names]
assert not missing, f"the wheel lacks {missing}"
assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names), "the wheel lacks LICENSE"
print(f"{len(names)} files, configs {sum(n.startswith('nfgen/configs/') for n in names)}, py.typed and LICENSE in it")
PY

step "install it into a fresh virtual environment"
base="$("$py" -c 'import sys; print(sys.base_prefix)')/bin/python3"
"$base" -m venv --without-pip "$tmp/venv"  # the project's pip installs into it (pip --python)
site="$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# The project's dependencies by path (plain lines: the project's own .pth hooks, such as its
# editable nfgen, are not run).
"$py" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("site-packages")))' > "$site/zz_project_deps.pth"
"$py" -m pip --python "$tmp/venv/bin/python" install --quiet --no-deps --no-index "$wheel"
mkdir "$tmp/work" && cd "$tmp/work"
"$tmp/venv/bin/python" - "$tmp/venv" <<'PY'
import sys, nfgen
assert nfgen.__file__.startswith(sys.argv[1]), f"nfgen comes from {nfgen.__file__}, not the wheel"
print(f"nfgen from {nfgen.__file__}")
PY
nfgen="$tmp/venv/bin/nfgen"

step "nfgen --version (from $(pwd), outside the repository)"
"$nfgen" --version

step "nfgen data digits data/digits"
"$nfgen" data digits data/digits

step "nfgen train --config quickstart.yaml (30 steps)"
"$nfgen" train --config quickstart.yaml --no-progress --set train.max_steps=30 --set train.warmup_steps=10 \
    --set train.eval_every=30 --set train.sample_every=30 --set train.checkpoint_every=30
test -f runs/quickstart/checkpoints/last.pt

step "nfgen sample"
"$nfgen" sample --ckpt runs/quickstart/checkpoints/last.pt --n 16 --out samples.png
test -s samples.png

step "wheel check passed in $((SECONDS - started)) s"
