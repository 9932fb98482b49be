"""Command line: ``python -m deploy_app.node --config node.yaml [overrides]``.

Options come from the config file (JSON or YAML; keys as in :class:`~deploy_app.node.config.NodeConfig`);
command-line flags override single keys. ``--print-config`` shows the result, ``--echo`` checks the
destination with a C-ECHO; both exit without starting the node.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from spleenseg.errors import SpleensegError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # the name it was started by: the console script spleenseg-node, or python -m deploy_app.node
    prog = "spleenseg-node" if Path(sys.argv[0]).name == "spleenseg-node" else "python -m deploy_app.node"
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="JSON or YAML file with the node's options")
    p.add_argument("--work-dir", help="spool folder (incoming/, queued/, running/, outbox/, done/, failed/)")
    p.add_argument("--ae-title", help="this node's AE title (default SPLEENSEG)")
    p.add_argument("--bind-address", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="DICOM port to listen on (default 11112)")
    p.add_argument("--allowed-calling-aets", help="comma-separated calling AE titles to accept, or '*'")
    p.add_argument("--quiet-seconds", type=float, help="a study is complete after this long without instances")
    p.add_argument("--workers", type=int, help="studies processed at the same time (default 1)")
    p.add_argument("-m", "--model", dest="model_path", help="model given to the pipeline (bundle folder or .ts)")
    p.add_argument("--pipeline", help="'module:function' run on each study (default deploy_app:run)")
    p.add_argument("--dest-host", help="destination (PACS) host for results")
    p.add_argument("--dest-port", type=int, help="destination DICOM port")
    p.add_argument("--dest-ae", help="destination AE title")
    p.add_argument("--status-port", type=int, help="serve GET /status and /health on this port (0 = any free)")
    p.add_argument("--log-level", help="DEBUG, INFO (default), WARNING")
    p.add_argument("--print-config", action="store_true", help="print the effective options as JSON and exit")
    p.add_argument("--echo", action="store_true", help="C-ECHO the destination, print the result and exit")
    return p.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    aets = args.allowed_calling_aets
    return {
        "work_dir": args.work_dir, "ae_title": args.ae_title, "bind_address": args.bind_address,
        "port": args.port, "quiet_seconds": args.quiet_seconds, "workers": args.workers,
        "model_path": args.model_path, "pipeline": args.pipeline, "status_port": args.status_port,
        "log_level": args.log_level,
        "allowed_calling_aets": [a.strip() for a in aets.split(",") if a.strip()] if aets else None,
        "destination.host": args.dest_host, "destination.port": args.dest_port,
        "destination.ae_title": args.dest_ae,
    }


def setup_logging(level: str, log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level.upper(), handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per study, not per PDU


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from deploy_app.node.config import load_config

        config = load_config(args.config, overrides_from(args))
        if args.print_config:
            print(json.dumps(config.to_dict(), indent=2))
            return 0
        if args.echo:
            return _echo(config)
        new_spool = not Path(config.work_dir).exists()
        setup_logging(config.log_level, Path(config.work_dir) / "node.log")
        if new_spool:  # never silently: a wrong or missing --work-dir would otherwise go unnoticed
            logging.getLogger("deploy_app.node").warning("spool folder %s does not exist; creating it",
                                                         Path(config.work_dir).resolve())
        from deploy_app.node.node import DicomNode

        DicomNode(config).serve_forever()
    except (SpleensegError, OSError) as exc:  # OSError: e.g. port already in use, work_dir not writable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _echo(config: Any) -> int:
    from deploy_app.node.sender import echo

    dest = config.destination
    if dest is None:
        print("error: no destination configured", file=sys.stderr)
        return 2
    ok = echo(dest, config.ae_title)
    print(f"C-ECHO {config.ae_title} -> {dest.ae_title}@{dest.host}:{dest.port}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
