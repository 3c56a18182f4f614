"""How a run was computed: resolved precision, encoder implementation, device class, library versions, and the
commit the process started from (with whether the package differed from it).

The run id hashes what a run was asked to do (the spec); these values say how this machine did it. A bf16 and an
fp32 run of one spec share a run id, so each run records them in ``metrics.json`` and the analysis compares them
before it puts runs into one edge.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from transfer.training.device import cpu_host_class, device_class


def git_commit(start: Path | None = None) -> str | None:
    """The commit checked out where the package lives, read from ``.git`` directly; None when there is none."""
    root = Path(start) if start is not None else Path(__file__).resolve().parents[2]
    try:
        git = root / ".git"
        if git.is_file():  # a worktree or submodule: ".git" names the real git directory
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.split(":", 1)[1].strip()
        common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").is_file() else git
        for folder in (git, common):
            if (folder / ref).is_file():
                return (folder / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return None


def package_changed(root: Path | None = None) -> bool | None:
    """Whether the package's tracked files differ from the checked-out commit (None: no git, or not a checkout)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "transfer"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


# Read once, when the process imports the training code: a run lasts long, and the checkout may move on meanwhile
# (a commit, a pull), while the process keeps running the code it imported at its start.
_CODE_AT_IMPORT = {"git_commit": git_commit(), "package_changed": package_changed()}


def provenance(device: torch.device, precision: str, encoder_impl: str, random_streams: str,
               bf16_compute: str | None = None) -> dict:
    """The provenance block of a run's metrics (``bf16_compute``: how a bf16 run computed; None otherwise)."""
    import transformers

    import transfer

    return {
        "precision": precision, "encoder_impl": encoder_impl, "device_class": device_class(device),
        **({"cpu": cpu_host_class()} if device.type == "cpu" else {}),
        "random_streams": random_streams, **({"bf16_compute": bf16_compute} if bf16_compute else {}),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "transfer": transfer.__version__,
        **_CODE_AT_IMPORT,
    }
