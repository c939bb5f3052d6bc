"""The command line: runs every ``gradlens ...`` line of ``examples/command_line.sh``.

The commands run in-process (``gradlens.cli.main``) in a temporary folder that holds a small
``ImageFolder`` of synthetic shapes (``shapes/circle/circle0.png``, ...). Writes
``cli_<section>.txt`` for each snippet section of the script (each command, its exit status
and its output, abridged) and ``cli_help.txt`` (``gradlens --help`` and ``gradlens cam
--help``), which ``docs/cli.md`` shows.

Run: ``python examples/command_line.py [--quick] [--out DIR]``
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import tempfile
from pathlib import Path

import numpy as np
from _common import parse_args
from PIL import Image

from gradlens import cli
from gradlens.demos.shapes import make_shapes

SCRIPT = Path(__file__).with_name("command_line.sh")


def sections() -> dict[str, list[list[str]]]:
    """The ``gradlens`` commands of each snippet section of the shell script."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    found: dict[str, list[list[str]]] = {}
    section = None
    for line in text.splitlines():
        marker = re.search(r"\[(start|end):([\w-]+)\]", line)
        if marker:
            section = marker.group(2) if marker.group(1) == "start" else None
            continue
        line = line.split("||")[0].split("  #")[0].strip()
        if section and line.startswith("gradlens "):
            found.setdefault(section, []).append(shlex.split(line)[1:])
    return found


def image_folder(root: Path, per_class: int) -> None:
    """An ImageFolder of synthetic shapes: ``root/<shape>/<shape><i>.png``, ``i = 0, 1, ...``."""
    data = make_shapes(3 * per_class, seed=0, colours=("red",))
    counts: dict[str, int] = {}
    for image, label in zip(data.images, data.labels):
        shape = data.class_names[int(label)].split()[1]
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{shape}{counts.setdefault(shape, 0)}.png")
        counts[shape] += 1


def run(argv: list[str]) -> tuple[int, str]:
    """``gradlens ARGV``: exit status and the output (stdout, then stderr)."""
    out, err = io.StringIO(), io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "90"  # the width argparse formats --help for
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(argv)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    progress = [
        line for line in err.getvalue().splitlines() if "samples/s" not in line
    ]  # tqdm bars
    return status, out.getvalue() + "\n".join(progress)


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def abridged_list(items: list[str], shown: int = 3) -> str:
    head = ", ".join(repr(item) for item in items[:shown])
    return f"[{head}, ...] ({len(items)} names)" if len(items) > shown else f"[{head}]"


def abridged(text: str, lines: int = 8) -> str:
    rows = text.rstrip().splitlines()
    return "\n".join(rows if len(rows) <= lines else rows[: lines - 2] + ["...", rows[-1]])


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    outputs = []
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        image_folder(Path(tmp) / "shapes", per_class=4 if args.quick else 8)
        os.chdir(tmp)
        try:
            for section, commands in sections().items():
                log = []
                for command in commands:
                    status, output = run(command)
                    assert status == (2 if section == "errors" else 0), (command, output)
                    log += [
                        f"$ gradlens {shlex.join(command)}",
                        abridged(output),
                        f"(exit status {status})",
                        "",
                    ]
                if section == "extract":
                    for folder in ["features", "circles"]:
                        log += [f"$ ls {folder}", *visible_files(Path(folder)), ""]
                    names = json.loads(Path("circles/manifest.json").read_text())["sample_names"]
                    log += [f"manifest.json of circles: sample_names {abridged_list(names)}"]
                if section == "cam":
                    log += ["$ ls maps", *sorted(p.name for p in Path("maps").iterdir())]
                path = args.out / f"cli_{section}.txt"
                path.write_text("\n".join(log).rstrip() + "\n")
                outputs.append(path)
        finally:
            os.chdir(here)
    help_file = args.out / "cli_help.txt"
    help_file.write_text(
        "$ gradlens --help\n"
        + run(["--help"])[1]
        + "\n$ gradlens cam --help\n"
        + run(["cam", "--help"])[1]
    )
    for path in outputs:
        print(path.read_text())
    return [*outputs, help_file]


if __name__ == "__main__":
    main()
