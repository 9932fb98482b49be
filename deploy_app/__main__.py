"""Command line: ``python -m deploy_app -i DICOM_DIR -o OUT_DIR -m MODEL [options]``.

Paths not given on the command line come from the environment variables the MONAI Deploy App SDK defines
(``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``), as inside a MAP container.
Exit codes: 0 success, 3 done but no selected series produced a SEG (no spleen found; the report is written),
2 bad input (one message naming the file and the problem), 1 unexpected failure.

The process ends with :func:`exit_without_teardown` once the result is in place: see its docstring.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import NoReturn

from deploy_app.runner import EXIT_NO_RESULT
from spleenseg.errors import SpleensegError


EXIT_CODES = (f"exit status: 0 SEG(s) written; {EXIT_NO_RESULT} finished, but no selected series produced a SEG "
              "(no spleen found: spleen_report.json lists the series with their QA flags, no SEG is written); "
              "2 bad input (one message naming the file); 1 unexpected failure")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; SDK-compatible -i/-o/-m/-l plus this app's own flags."""
    env = {"input": os.environ.get("HOLOSCAN_INPUT_PATH"), "output": os.environ.get("HOLOSCAN_OUTPUT_PATH"),
           "model": os.environ.get("HOLOSCAN_MODEL_PATH")}
    p = argparse.ArgumentParser(prog="python -m deploy_app",
                                description="Segment the spleen in DICOM CT; write DICOM SEG + spleen_report.json.",
                                epilog=EXIT_CODES)
    p.add_argument("-i", "--input", default=env["input"], help="DICOM folder (env HOLOSCAN_INPUT_PATH)")
    p.add_argument("-o", "--output", default=env["output"], help="output folder (env HOLOSCAN_OUTPUT_PATH)")
    p.add_argument("-m", "--model", default=env["model"],
                   help="bundle folder with models/model.pt, or TorchScript bundle file (env HOLOSCAN_MODEL_PATH)")
    p.add_argument("--rules", default=None, help="series selection rules JSON (default: the shipped series_rules.json)")
    p.add_argument("--all-series", action="store_true", help="segment every matching series, not only the best")
    p.add_argument("--stl", action="store_true", help="also write a surface mesh spleen_<series UID>.stl (LPS mm)")
    p.add_argument("--nifti", action="store_true", help="also write the mask spleen_pred_<series UID>.nii.gz")
    p.add_argument("--generate-missing-uids", action="store_true",
                   help="when Study/Series Instance UIDs are blank, generate deterministic ones (with a warning) "
                        "instead of refusing the input")
    p.add_argument("-l", "--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default INFO)")
    args = p.parse_args(argv)
    missing = [name for name in ("input", "output", "model") if not getattr(args, name)]
    if missing:
        p.error(f"missing {', '.join('--' + m for m in missing)} (or the HOLOSCAN_*_PATH environment variables)")
    return args


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_known_noise() -> None:
    """Hide messages that are expected on a CPU machine and say nothing about the input.

    README.md, "Deployment: DICOM CT in, DICOM SEG out" (the **CPU.** paragraph) lists them.
    """
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    for name in ("monai.deploy.core.models.named_model", "monai.deploy.operators.decoder_nvimgcodec",
                 "monai.deploy.operators.dicom_data_loader_operator", "monai.data.nvimgcodec_pydicom_plugin"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropMessages("The nvimgcodec decoder plugin did not register"))
    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


def main(argv: list[str] | None = None) -> int:
    """Run the app; map errors to exit codes."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_known_noise()
    # Holoscan repeats every Python error as several "[error] GXF_FAILURE" lines; our own message says it all.
    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "INFO" if args.log_level == "DEBUG" else "CRITICAL")
    warnings.filterwarnings("ignore", message="Current stack size")  # harmless on CPU, see the README, "Deployment"
    from deploy_app.runner import run

    try:
        result = run(args.input, args.output, args.model, rules=args.rules, all_series=args.all_series,
                     stl=args.stl, nifti=args.nifti, allow_generated_uids=args.generate_missing_uids)
    except SpleensegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in result.files:
        print(path)
    return 0 if result.seg_files else EXIT_NO_RESULT


def exit_without_teardown(code: int) -> NoReturn:
    """End the process now: flush logs and standard streams, then ``os._exit(code)``.

    Why: when :func:`main` returns, every output file is closed and moved into place, yet Python's interpreter
    teardown of torch, MONAI and Holoscan would still take about 1.1 s on two cores (some 15% of a run on a
    512x512x120 CT) and has nothing left to do for a one-shot app. Under a profiler or a coverage tracer
    (``sys.getprofile()``/``sys.gettrace()`` set) the normal exit is kept, so their reports are still written.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    exit_without_teardown(main())
