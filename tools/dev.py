#!/usr/bin/env python3
"""Set-up and entry commands that work on a fresh clone with only python3 present.

  python3 tools/dev.py demo   create .venv if needed, install, then demo corpus -> build ->
                              train -> eval on the embedded demo, and the same recipe
                              without its high-res stages, side by side (CPU, ~13 min)
  python3 tools/dev.py test   create .venv if needed, install, lint (ruff), run the test suite

Uses only the standard library until the virtual environment exists.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".mixdata-installed"


def _install_key() -> str:
    text = (ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes()
    return hashlib.sha256(text).hexdigest()


def ensure_env() -> Path:
    """Create .venv and install mixdata[dev] pinned by constraints.txt (CPU torch)."""
    python = BIN / "python"
    if not python.exists():
        print(f"[dev] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not STAMP.exists() or STAMP.read_text() != _install_key():
        print("[dev] installing mixdata and its dependencies (CPU torch, pinned)", flush=True)
        _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
              "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[dev]"])
        STAMP.write_text(_install_key())
    return python


def _run(cmd: list[str]) -> None:
    print("[dev] $ " + " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code:
        sys.exit(code)


def demo(extra: list[str]) -> None:
    """Demo corpus -> validate -> build 4 stages -> train 4 stages with an eval after each;
    then the ablation without the two high-res stages, read and highres (SFT starts from
    pretrain, which is reused from the first run), and both runs side by side. `extra` goes
    to both trainings."""
    ensure_env()
    mixdata = str(BIN / "mixdata")
    _run([mixdata, "demo"])
    _run([mixdata, "validate", "recipes/demo.yaml"])
    _run([mixdata, "build", "recipes/demo.yaml", "--stage", "all"])
    _run([mixdata, "train", "recipes/demo.yaml", "--out", "runs/demo", *extra])
    _run([mixdata, "train", "recipes/demo.yaml", "--out", "runs/demo-no-highres",
          "--skip", "read", "--skip", "highres", "--reuse", "runs/demo", *extra])
    _run([mixdata, "eval", "runs/demo", "runs/demo-no-highres", "--saved"])


def test(extra: list[str]) -> None:
    """Lint (ruff, configured in pyproject.toml), then the test suite."""
    python = ensure_env()
    _run([str(BIN / "ruff"), "check", "."])
    _run([str(python), "-m", "pytest", *extra])


def main() -> None:
    commands = {"demo": demo, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
