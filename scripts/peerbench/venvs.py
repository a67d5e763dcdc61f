"""The peers' venvs under the bench directory, created with `python -m venv` and pip once.

Each peer has its own (`venv-flower`: `flwr[simulation]`, which pins its own ray; `venv-pfl`:
`pfl`, which pins an older dp-accounting), never fedray's `.venv`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from peerbench.cases import PEER_TABLE, Peer

TORCH_PIN = "torch==2.13.0"


def venv_python(bench_dir: Path, peer: str) -> Path:
    """The python of `peer`'s venv."""
    return bench_dir / f"venv-{peer}" / "bin" / "python"


def venv_works(python: Path, imports: Sequence[str]) -> bool:
    """Whether `python` exists and imports every module of `imports`."""
    if not python.exists():
        return False
    check = subprocess.run(
        [str(python), "-c", f"import {', '.join(imports)}"], capture_output=True, check=False
    )
    return check.returncode == 0


def ensure_venv(bench_dir: Path, peer: Peer, log: Callable[[str], None]) -> Path:
    """Creates `peer`'s venv with pip unless it already works; returns its python.

    torch is pinned to `TORCH_PIN`; if pip cannot resolve that with the peer's own pins, the
    install is retried with whatever torch pip resolves (the result lines record the versions).

    Raises:
        RuntimeError: If the venv still does not work after installing.
    """
    python = venv_python(bench_dir, peer.name)
    if venv_works(python, peer.imports):
        return python
    venv = python.parent.parent
    log(f"creating {venv} ({peer.requirement}, {TORCH_PIN}, numpy, scipy)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    pinned = subprocess.run([*pip, peer.requirement, TORCH_PIN, "numpy", "scipy"], check=False)
    if pinned.returncode != 0:
        log(f"{peer.name}: {TORCH_PIN} conflicts with its pins; taking the torch pip resolves")
        subprocess.run([*pip, peer.requirement, "torch", "numpy", "scipy"], check=True)
    if not venv_works(python, peer.imports):
        raise RuntimeError(f"{venv} was installed but cannot import {peer.imports}")
    return python


def prepare_peers(
    systems: Sequence[str], bench_dir: Path, log: Callable[[str], None]
) -> dict[str, Path]:
    """Each selected peer's venv python, creating the venvs that do not work yet."""
    pythons = {}
    for system in systems:
        if system in PEER_TABLE:
            started = time.perf_counter()
            pythons[system] = ensure_venv(bench_dir, PEER_TABLE[system], log)
            log(f"{system} venv ready ({time.perf_counter() - started:.1f} s)")
    return pythons
