"""``make demo``: the project's main job on an embedded default, end to end, printing where everything went.

Stages run in order; each writes into its own sub-folder of ``--out`` so a user can look at one stage alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from spleenseg.phantom import make_cohort


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def phantom_stage(out: Path, n_cases: int, seed: int) -> Path:
    """Generate an MSD-style phantom cohort (imagesTr/labelsTr/imagesTs/dataset.json) under ``out/phantoms``."""
    _banner(f"1. synthetic CT cohort ({n_cases} cases, seed {seed})")
    target = out / "phantoms"
    if (target / "dataset.json").is_file():
        print(f"reusing {target}")
        return target
    t0 = time.time()
    make_cohort(target, n_cases=n_cases, seed=seed, fmt="nifti")
    print(f"wrote {target} in {time.time() - t0:.1f} s")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--cases", type=int, default=20, help="number of phantom cases")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cohort = phantom_stage(args.out, args.cases, args.seed)
    _banner("done")
    print(f"phantom cohort: {cohort.resolve()}  (dataset.json, imagesTr/, labelsTr/, imagesTs/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
