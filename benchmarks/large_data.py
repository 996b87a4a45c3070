"""Benchmark: the large preset (30+ million events, four observations, 1024 x 1024 image).

Simulates the ``large`` preset, or reuses a folder that already holds one,
then times a cold ``hpcxt prep`` of it. Each step runs in a child process,
so that its peak memory (``ru_maxrss`` of that child) is its own. Prints the
figures; asserts nothing, because these machines are shared and noisy. Not
part of the test suite: it takes minutes and several GB of disk.

    .venv/bin/python benchmarks/large_data.py            # simulate into a temporary folder
    .venv/bin/python benchmarks/large_data.py DIR        # reuse DIR/config.yaml, or simulate into DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep import CHILD as PREP_CHILD  # noqa: E402  (the same timed prep as benchmarks/prep.py)

SIMULATE_CHILD = r"""
import json, resource, sys, time
from hpcxt.prep.simulate import simulate
t = time.perf_counter()
simulate(sys.argv[1], preset="large", seed=int(sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - t,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(code: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"benchmark step failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_files(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "work" not in
                   p.relative_to(folder).parts)
    total = sum(p.stat().st_size for p in files)
    print(f"  files: {len(files)}, {total / 2**30:.2f} GiB in all")
    for p in files:
        size = p.stat().st_size
        if size > 2**20:
            print(f"    {size / 2**20:9.1f} MiB  {p.relative_to(folder)}")


def _image_shape(folder: Path) -> str:
    from astropy.io import fits
    with fits.open(folder / "work" / "prep" / "counts.fits") as hdul:
        ny, nx = hdul[0].data.shape
    return f"{nx} x {ny}"


def run(folder: Path, seed: int) -> None:
    config = folder / "config.yaml"
    if config.exists():
        print(f"reusing {folder}")
    else:
        sim = _child(SIMULATE_CHILD, folder, seed)
        print(f"large preset simulated into {folder} (seed {seed}): {sim['seconds']:.1f} s, "
              f"peak memory (max RSS) {sim['maxrss_mib']:.0f} MiB")
    truth = yaml.safe_load((folder / "truth" / "truth.yaml").read_text())
    obs = truth["observations"]
    n_src = sum(o["events"] for o in obs)
    n_bkg = sum(o["background_events"] for o in obs)
    print(f"  preset {truth['preset']}, {len(obs)} observations: {n_src:,} events, "
          f"{n_bkg:,} background events")
    for o in obs:
        print(f"    obsid {o['obsid']}: {o['events']:,} events in {o['exposure'] / 1e3:.1f} ks")
    _print_files(folder)

    prep = _child(PREP_CHILD, config)
    n = n_src + n_bkg
    print(f"hpcxt prep (cold, one run): {prep['seconds']:.1f} s for {n:,} events read "
          f"(source + background), image {_image_shape(folder)} pixels")
    print(f"  throughput: {n / prep['seconds']:,.0f} events/s")
    print(f"  peak memory (max RSS of the prep process): {prep['maxrss_mib']:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path,
                    help="folder of an earlier large simulation, or where to write one "
                         "(default: a temporary folder, removed afterwards)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.folder is not None:
        run(args.folder, args.seed)
        return
    with tempfile.TemporaryDirectory(prefix="hpcxt-large-") as tmp:
        run(Path(tmp) / "sim", args.seed)


if __name__ == "__main__":
    main()
