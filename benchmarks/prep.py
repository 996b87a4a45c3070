"""Benchmark: ``hpcxt prep`` of the demo preset (events per second, peak memory).

Simulates the demo preset once into a temporary folder, then times a cold
prep (every stage runs) in a child process, so that peak memory (ru_maxrss
of that child) is prep's alone. Prints the figures; asserts nothing about
speed, because these machines are shared and noisy.

    .venv/bin/python benchmarks/prep.py [--preset demo] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, logging
logging.disable(logging.INFO)
from hpcxt.stages.prep import run_prep
from hpcxt.io.config import load_config
cfg = load_config(sys.argv[1])
t = time.perf_counter()
run_prep(cfg, force=True)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo", choices=("small", "demo"))
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from hpcxt.prep.simulate import simulate

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sim"
        t = time.perf_counter()
        simulate(out, preset=args.preset, seed=1)
        t_sim = time.perf_counter() - t
        truth = __import__("yaml").safe_load((out / "truth" / "truth.yaml").read_text())
        n_events = sum(o["events"] + o["background_events"] for o in truth["observations"])
        runs = []
        for _ in range(args.repeat):
            shutil.rmtree(out / "work", ignore_errors=True)
            proc = subprocess.run([sys.executable, "-c", CHILD, str(out / "config.yaml")],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        best = min(r["seconds"] for r in runs)
        peak = max(r["maxrss_mib"] for r in runs)
        print(f"prep benchmark, preset {args.preset}: {len(truth['observations'])} observations, "
              f"{n_events} events read (source + background); simulation took {t_sim:.1f} s")
        print(f"  prep wall time: best {best:.2f} s of {args.repeat} "
              f"({', '.join('%.2f' % r['seconds'] for r in runs)})")
        print(f"  throughput: {n_events / best:,.0f} events/s")
        print(f"  peak memory (max RSS of the prep process): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
