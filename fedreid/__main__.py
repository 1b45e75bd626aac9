"""``python -m fedreid`` = the ``fedreid`` console script (:mod:`fedreid.cli`)."""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point: run :func:`fedreid.cli.main` and exit with its status."""
    from fedreid.cli import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
