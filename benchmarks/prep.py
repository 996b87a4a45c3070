"""Benchmark: ``hpcxt prep`` throughput and peak memory (tracemalloc peak and max RSS).

Simulates a preset once into a temporary folder (or reuses an existing
simulation with ``--sim DIR``, whose own work directory is left alone: prep
writes into a temporary one), then runs a cold prep (every stage runs) in a
child process, so that peak memory is prep's alone: ``tracemalloc``'s peak
(numpy reports its array buffers to it) and ``ru_maxrss`` of the child.
Prints the figures and the bundle's size, since the target is prep peak
memory at most twice the bundle. Asserts nothing about speed, because these
machines are shared and noisy.

    .venv/bin/python benchmarks/prep.py [--preset demo] [--repeat 2] [--chunk-rows N]
    .venv/bin/python benchmarks/prep.py --sim /tmp/simref/large --repeat 1
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

import yaml

CHILD = r"""
import inspect, json, resource, sys, time, tracemalloc, logging
logging.disable(logging.INFO)
from hpcxt.stages.prep import run_prep
from hpcxt.io.config import load_config
cfg = load_config(sys.argv[1])
kwargs = {}
if len(sys.argv) > 2 and sys.argv[2] != "default":
    kwargs["chunk_rows"] = int(sys.argv[2])
tracemalloc.start()
t = time.perf_counter()
bundle = run_prep(cfg, force=True, **kwargs)
dt = time.perf_counter() - t
traced_peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"seconds": dt, "tracemalloc_peak_mib": traced_peak / 2**20,
                  "bundle_mib": bundle.stat().st_size / 2**20,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def relocated_config(sim: Path, dest: Path) -> Path:
    """A copy of ``sim``'s config with absolute input paths and its work directory in ``dest``.

    So a benchmark never writes into (or deletes) a shared simulation's own work directory.
    """
    cfg = yaml.safe_load((sim / "config.yaml").read_text())
    for o in cfg["observations"]:
        for key, value in o.items():
            if key != "obsid" and isinstance(value, str):
                o[key] = str((sim / value).resolve())
    for key in ("crop_region", "point_sources"):
        if cfg.get("prep", {}).get(key):
            cfg["prep"][key] = str((sim / cfg["prep"][key]).resolve())
    cfg["workdir"] = str(dest / "work")
    path = dest / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_prep_child(config: Path, chunk_rows: str = "default") -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(config), chunk_rows],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"prep failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(sim: Path, label: str, repeat: int, chunk_rows: str) -> None:
    truth = yaml.safe_load((sim / "truth" / "truth.yaml").read_text())
    n_events = sum(o["events"] + o["background_events"] for o in truth["observations"])
    input_mib = sum(p.stat().st_size for p in sim.rglob("*_evt2.fits")) / 2**20
    with tempfile.TemporaryDirectory(prefix="hpcxt-bench-prep-") as tmp:
        config = relocated_config(sim, Path(tmp))
        runs = []
        for _ in range(repeat):
            shutil.rmtree(Path(tmp) / "work", ignore_errors=True)
            runs.append(run_prep_child(config, chunk_rows))
    best = min(r["seconds"] for r in runs)
    rss = max(r["maxrss_mib"] for r in runs)
    traced = max(r["tracemalloc_peak_mib"] for r in runs)
    bundle = runs[0]["bundle_mib"]
    print(f"prep benchmark, {label}: {len(truth['observations'])} observations, "
          f"{n_events:,} events read (source + background), {input_mib:,.0f} MiB of event "
          f"files; chunk_rows {chunk_rows}")
    print(f"  prep wall time: best {best:.2f} s of {repeat} "
          f"({', '.join('%.2f' % r['seconds'] for r in runs)}), tracemalloc on")
    print(f"  throughput: {n_events / best:,.0f} events/s")
    print(f"  bundle.h5: {bundle:,.0f} MiB")
    print(f"  peak memory: tracemalloc {traced:,.0f} MiB, max RSS {rss:,.0f} MiB "
          f"({rss / bundle:.2f}x the bundle)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo", choices=("small", "demo", "large"))
    ap.add_argument("--sim", type=Path, help="an existing simulation folder to prep instead")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--chunk-rows", default="default",
                    help="prep.chunk_rows for this run (default: the config's)")
    args = ap.parse_args()
    if args.sim is not None:
        measure(args.sim.resolve(), f"simulation {args.sim}", args.repeat, args.chunk_rows)
        return

    from hpcxt.prep.simulate import simulate

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sim"
        t = time.perf_counter()
        simulate(out, preset=args.preset, seed=1)
        print(f"simulated preset {args.preset} in {time.perf_counter() - t:.1f} s")
        measure(out, f"preset {args.preset}", args.repeat, args.chunk_rows)


if __name__ == "__main__":
    main()
