"""The ``mammoseg`` command: serve the node, and the training-side commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service import __version__

TRAIN_COMMANDS = ("train", "evaluate", "tune", "export", "make-dataset")

# Exit statuses, documented in README.md and deploy/README.md. systemd's
# RestartPreventExitStatus=2 (deploy/mammoseg.service) stops a restart loop on a bad config.
EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1  # segment: at least one input was not segmented
EXIT_BAD_SETTINGS = 2  # a setting, the config file or the command line is wrong
EXIT_CANNOT_START = 3  # model, job store, data directory or a port unusable at start-up

SETTINGS_EPILOG = """\
These flags are the most used settings. Every setting (about 50) is also a key of the
TOML config file (--config FILE or MAMMOSEG_CONFIG) and an environment variable
MAMMOSEG_<KEY> (upper case, e.g. MAMMOSEG_ADMIN_TOKEN); flags win over the environment,
which wins over the file. deploy/README.md lists every one; deploy/mammoseg.example.toml
has them all with a comment.

Check a configuration before starting: mammoseg check-config [the same flags]
prints the effective settings with their source and tries the model, the store,
the data directory and the ports.

Exit status: 0 stopped cleanly (SIGTERM/SIGINT); 2 bad settings or command line;
3 cannot start (model, job store, data directory or a port).
"""

DESTINATION_EPILOG = """\
Destinations (--destination, repeatable): AET@HOST:PORT sends in the clear; DICOM TLS is
  --destination 'tls://AET@HOST:PORT?ca_file=FILE[&cert_file=FILE&key_file=FILE][&server_name=NAME]'
(quote it: '&' is special to the shell). The server certificate must chain to ca_file
(the only trusted CA) and name server_name, else HOST (a DNS or IP subjectAltName);
cert_file and key_file are the node's client certificate. TLS 1.2 or later, ciphers
from tls_ciphers. In the config file a destination may also be a table:
  { ae_title = "PACS", host = "pacs.example.org", port = 2762, tls = true,
    ca_file = "/etc/mammoseg/tls/pacs-ca.crt" }
"""


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
        help="where results go (repeatable); DICOM TLS: tls://AET@HOST:PORT?ca_file=FILE... "
        "(every option: the end of `mammoseg serve --help`)",
    )
    p.add_argument("--model-path", type=Path, help="ONNX model (default: the shipped model)")
    p.add_argument("--workers", type=int, help="worker threads (default 1)")
    p.add_argument("--database-url", help="postgresql://... (default: SQLite in the data dir)")
    p.add_argument("--worker-id", help="names this process's claims (default: host name)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="run the DICOM node, the workers and the HTTP server",
        epilog=DESTINATION_EPILOG + "\n" + SETTINGS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _node_options(p, network=True)
    p = sub.add_parser(
        "worker",
        help="run workers only (scale-out: a shared PostgreSQL store and spool)",
        epilog=DESTINATION_EPILOG + "\n" + SETTINGS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _node_options(p, network=False)
    p = sub.add_parser(
        "check-config",
        help="validate the settings serve would use, print them and try model, store and ports",
        description="Read the config file, the MAMMOSEG_* environment and the flags exactly as "
        "`mammoseg serve` does; print every effective setting with its source (default, file, "
        "env, flag; secrets masked); try the model, the job store, the data directory and the "
        "ports. Exit status 0: serve can start; 2: the problems are listed on stderr.",
        epilog="See deploy/README.md for every setting and its MAMMOSEG_* variable, and "
        "`mammoseg serve --help` for the forms of --destination (DICOM TLS among them).",
    )
    _node_options(p, network=True)
    p.add_argument(
        "--worker",
        action="store_true",
        help="check as `mammoseg worker` would run (no DICOM or HTTP port)",
    )


def _segment_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from service.segment_files import add_arguments

    p = sub.add_parser(
        "segment",
        help="segment image files (PNG, JPEG, TIFF, DICOM) into masks, overlays and DICOM results",
    )
    add_arguments(p)


def _bench_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # Listed only: main() hands `mammoseg bench ...` to service.bench.run, whose parser has
    # the flags, so no other command imports the bench (tests/unit/test_bench_isolation.py).
    sub.add_parser(
        "bench",
        help="measure the model, the node end to end, throughput, receive and memory",
        add_help=False,
    )


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    from service.settings import Settings

    return {k: v for k, v in vars(args).items() if k in Settings.model_fields}


def serve(args: argparse.Namespace) -> int:
    """``serve`` and ``worker``: settings from flags/env/file, then run until SIGTERM."""
    import os

    from service.contract import ContractError
    from service.logs import configure_logging
    from service.node import run_node, run_worker
    from service.settings import SettingsError, config_file_from, load_settings
    from service.store import StoreError

    config = config_file_from(args.config, os.environ)
    try:
        settings = load_settings(config, **_overrides(args))
    except SettingsError as exc:
        print(f"mammoseg: {exc}", file=sys.stderr)
        print("mammoseg: `mammoseg check-config` lists every problem", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    configure_logging(settings.log_level, settings.log_format)
    try:
        (run_node if args.command == "serve" else run_worker)(settings)
    except ContractError as exc:
        logging.getLogger("service").error("cannot start: %s", exc)
        print(f"mammoseg: cannot start: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except (StoreError, OSError) as exc:
        print(f"mammoseg: cannot start: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    return EXIT_OK


def check_config(args: argparse.Namespace) -> int:
    """``check-config``: exit 0 if serve can start with these settings, else 2."""
    import os

    from service.config_check import check, print_report

    report = check(args.config, _overrides(args), os.environ, worker=args.worker)
    print_report(report, sys.stdout, sys.stderr)
    return report.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammoseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mammoseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _segment_parser(sub)
    _bench_parser(sub)
    for name in TRAIN_COMMANDS:
        sub.add_parser(name, help=f"{name} (training side; needs the train extra)", add_help=False)
    return parser


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
            return EXIT_BAD_SETTINGS
        return int(train_main(argv))
    if argv and argv[0] == "bench":
        from service.bench.run import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("serve", "worker"):
        return serve(args)
    if args.command == "check-config":
        return check_config(args)
    if args.command == "segment":
        from service.segment_files import main as segment_main

        return segment_main(args)
    parser.error(f"unknown command {args.command}")
    return EXIT_BAD_SETTINGS
