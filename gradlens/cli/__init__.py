"""The ``gradlens`` command line: ``layers``, ``cam``, ``extract``, ``demo`` and ``bench``.

Every subcommand has ``--help`` with examples. Errors the user can fix (a bad path, an
unknown model, layer or method, weights that cannot be downloaded) print one line
``gradlens: error: ...`` on stderr and exit with status 2; set ``GRADLENS_DEBUG=1`` to see
the traceback instead.

The package: ``parser`` (the arguments), ``commands`` (one function per subcommand),
``models`` (models and weights from their command-line names), ``images`` (preprocessing,
image files in, maps out), ``messages`` (one-line errors).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .images import Preprocess
from .messages import describe_error
from .models import load_model
from .parser import build_parser

__all__ = ["main", "build_parser", "load_model", "Preprocess"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gradlens`` command line.

    Args:
        argv: the arguments after ``gradlens`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 2 for errors (usage errors too), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        print("gradlens: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("GRADLENS_DEBUG"):
            raise
        print(f"gradlens: error: {describe_error(exc)}", file=sys.stderr)
        return 2
    return status
