"""``python -m fedreid.data check [overrides...]``: check a scenario's data before a run.

Composes the config exactly as ``run_simulation.py`` does (same hydra overrides), generates
the synthetic benchmark if the source is synthetic, reads every client's dataset and prints
one row per client (training identities, images and cameras, then query and gallery sizes:
the FedReID paper's dataset table) plus totals and the server's public data. Anything
missing or contradictory ends the command with one line on stderr and exit code 2, so it
can guard a long job in a script.

Examples::

    python -m fedreid.data check                          # the default 9 synthetic clients
    python -m fedreid.data check data=by_camera           # Market-1501 split by camera
    python -m fedreid.data check data=by_identity data.num_splits=8
    python -m fedreid.data check data=real_by_dataset data.root=/data/reid
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from fedreid.errors import FedReIDError

EXIT_ERROR = 2


@dataclass(frozen=True)
class ClientRow:
    """One client's counts, as printed: training identities, images and cameras, then the
    sizes of the query and gallery it is evaluated on."""

    name: str
    identities: int
    images: int
    cameras: int
    query: int
    gallery: int


def check(overrides: Sequence[str], config_name: str = "config") -> list[ClientRow]:
    """Compose the config, make sure every client's data loads, and print the table.

    Args:
        overrides: hydra overrides, as for ``run_simulation.py`` (``data=by_camera``, ...).
        config_name: the primary config in ``fedreid/conf/``.

    Returns:
        One :class:`ClientRow` per client, in partition-id order.

    Raises:
        FedReIDError: (its subclasses) on a bad config or missing / empty data.
    """
    from rich.console import Console
    from rich.table import Table

    from fedreid.config import compose, resolve_path
    from fedreid.data.scenarios import client_specs, public_images, synthetic_root

    cfg = compose(list(overrides), config_name=config_name)
    data = cfg.data
    if data.source == "synthetic":
        synthetic_root(data)
    specs = client_specs(data)
    rows: list[ClientRow] = []
    train_paths: set[str] = set()
    query_paths: set[str] = set()
    gallery_paths: set[str] = set()
    cameras: set[tuple[str, int]] = set()
    for spec in specs:
        ds = spec.load()
        for split, items in (("train", ds.train), ("query", ds.query), ("gallery", ds.gallery)):
            if not items:
                raise FedReIDError(f"client {spec.name}: empty {split} split in {ds.root}")
        counts = ds.summary()
        rows.append(
            ClientRow(
                spec.name,
                counts["train_ids"],
                counts["train_images"],
                ds.num_train_cams,
                counts["query"],
                counts["gallery"],
            )
        )
        train_paths.update(p for p, _, _ in ds.train)
        query_paths.update(p for p, _, _ in ds.query)
        gallery_paths.update(p for p, _, _ in ds.gallery)
        cameras.update((str(ds.root), c) for _, _, c in ds.train)

    public_line = "public (server, distillation): none configured"
    if data.public:
        try:
            public_line = f"public (server, distillation): {len(public_images(data))} images"
        except FedReIDError as err:
            if cfg.strategy.kd:
                raise
            public_line = f"public (server, distillation): not available ({err})"

    table = Table(
        title=f"{len(rows)} clients · scenario {data.scenario} · source {data.source}",
        caption=(
            "identities, images, cameras: the client's training split. total: identities "
            "summed (classifier rows), other columns distinct (split scenarios share one "
            "query/gallery)"
        ),
    )
    table.add_column("client")
    for col in ("identities", "images", "cameras", "query", "gallery"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.name, *(str(v) for v in (r.identities, r.images, r.cameras, r.query, r.gallery))
        )
    table.add_section()
    table.add_row(
        "total",
        str(sum(r.identities for r in rows)),
        str(len(train_paths)),
        str(len(cameras)),
        str(len(query_paths)),
        str(len(gallery_paths)),
        style="bold",
    )
    console = Console(file=sys.stdout, width=max(100, Console().width))
    console.print(f"data root: {resolve_path(data.root)}")
    console.print(table)
    console.print(public_line)
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (one subcommand, ``check``)."""
    parser = argparse.ArgumentParser(
        prog="python -m fedreid.data",
        description="Dataset tools for fedreid.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "check",
        help="load every client of the configured scenario and print a per-client table",
        description="Compose fedreid/conf/ with the given hydra overrides, generate synthetic data "
        "if needed, load every client and print its counts. Exit code 2 on any problem.",
    )
    p.add_argument(
        "--config-name", default="config", help="primary config in fedreid/conf/ (default: config)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="hydra overrides, e.g. data=by_camera data.split_dataset=market1501",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 fine, 2 on a one-line error)."""
    args = build_parser().parse_args(argv)
    try:
        check(args.overrides, config_name=args.config_name)
    except FedReIDError as err:
        message = " ".join(str(err).split())  # one line, whatever the exception held
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
