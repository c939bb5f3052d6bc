"""``python -m gradlens``: the ``gradlens`` command line."""

from .cli import main

raise SystemExit(main())
