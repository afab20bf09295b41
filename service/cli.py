"""The ``mammoseg`` command: serve the node, and the training-side commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service import __version__

TRAIN_COMMANDS = ("train", "evaluate", "export", "make-dataset")


def _node_options(p: argparse.ArgumentParser, *, network: bool) -> None:
    """Flags shared by ``serve`` and ``worker``; each is also a setting (deploy/README.md)."""
    p.add_argument("--config", type=Path, help="TOML config file (also MAMMOSEG_CONFIG)")
    p.add_argument(
        "--data-dir", type=Path, help="spool, outbox and job store (default ./mammoseg-data)"
    )
    p.add_argument("--ae-title", help="this node's AE title (default MAMMOSEG)")
    if network:
        p.add_argument("--dicom-host", help="address the SCP binds (default 127.0.0.1)")
        p.add_argument("--dicom-port", type=int, help="DICOM port (default 11112)")
        p.add_argument("--http-host", help="address the HTTP server binds (default 127.0.0.1)")
        p.add_argument("--http-port", type=int, help="HTTP port (default 8080)")
        p.add_argument(
            "--allowed-caller",
            action="append",
            dest="allowed_callers",
            metavar="AET",
            help="calling AE title allowed to associate (repeatable; none: any)",
        )
    p.add_argument(
        "--destination",
        action="append",
        dest="destinations",
        metavar="AET@HOST:PORT",
        help="where results go (repeatable)",
    )
    p.add_argument("--model-path", type=Path, help="ONNX model (default: the shipped model)")
    p.add_argument("--workers", type=int, help="worker threads (default 1)")
    p.add_argument("--database-url", help="postgresql://... (default: SQLite in the data dir)")
    p.add_argument("--worker-id", help="names this process's claims (default: host name)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the DICOM node, the workers and the HTTP server")
    _node_options(p, network=True)
    p = sub.add_parser(
        "worker",
        help="run workers only (scale-out: a shared PostgreSQL store and spool)",
    )
    _node_options(p, network=False)


def _segment_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from service.segment_files import add_arguments

    p = sub.add_parser(
        "segment",
        help="segment image files (PNG, JPEG, TIFF, DICOM) into masks, overlays and DICOM results",
    )
    add_arguments(p)


def _bench_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from service.bench import add_arguments

    p = sub.add_parser(
        "bench",
        help="measure the model, the node end to end, throughput, receive and memory",
        description="Print a table of figures taken in one run (docs/performance.md).",
    )
    add_arguments(p)


def serve(args: argparse.Namespace) -> int:
    """``serve`` and ``worker``: settings from flags/env/file, then run until SIGTERM."""
    import os

    from service.contract import ContractError
    from service.logs import configure_logging
    from service.node import run_node, run_worker
    from service.settings import Settings, SettingsError, load_settings
    from service.store import StoreError

    config = args.config or (
        Path(os.environ["MAMMOSEG_CONFIG"]) if os.environ.get("MAMMOSEG_CONFIG") else None
    )
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        settings = load_settings(config, **overrides)
    except SettingsError as exc:
        print(f"mammoseg: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        (run_node if args.command == "serve" else run_worker)(settings)
    except ContractError as exc:
        logging.getLogger("service").error("cannot start: %s", exc)
        print(f"mammoseg: cannot start: {exc}", file=sys.stderr)
        return 3
    except (StoreError, OSError) as exc:
        print(f"mammoseg: cannot start: {exc}", file=sys.stderr)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAIN_COMMANDS:
        try:
            from model_export.cli import main as train_main
        except ImportError as exc:
            print(
                f"mammoseg {argv[0]}: needs the train extra: pip install 'mammoseg[train]' ({exc})",
                file=sys.stderr,
            )
            return 2
        return int(train_main(argv))
    parser = argparse.ArgumentParser(prog="mammoseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mammoseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _segment_parser(sub)
    _bench_parser(sub)
    for name in TRAIN_COMMANDS:
        sub.add_parser(name, help=f"{name} (training side; needs the train extra)", add_help=False)
    args = parser.parse_args(argv)
    if args.command in ("serve", "worker"):
        return serve(args)
    if args.command == "segment":
        from service.segment_files import main as segment_main

        return segment_main(args)
    if args.command == "bench":
        from service.bench import main as bench_main

        return bench_main(args)
    parser.error(f"unknown command {args.command}")
    return 2
