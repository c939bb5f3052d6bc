"""Regenerate ``docs/figures``: every example in full mode, in one process (one training run).

Run: ``python examples/_make_figures.py [NAME ...]`` (default: every example).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FIGURES = HERE.parent / "docs" / "figures"


def main(names: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    torch.set_num_threads(1)  # small models: one thread is faster on a busy 2-core machine
    scripts = (
        [HERE / f"{n}.py" for n in names]
        if names
        else sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_"))
    )
    for script in scripts:
        print(f"== {script.name}", flush=True)
        outputs = runpy.run_path(str(script))["main"](["--out", str(FIGURES)])
        for path in outputs:
            print(f"   {path} ({Path(path).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main(sys.argv[1:])
