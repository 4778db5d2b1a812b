"""`python -m msa_jax.benchmarks --config=configs/benchmarks.py[:quick]`

The benchmark suite, an absl app (configs/benchmarks.py: `stages`, `quick`, `json`, each
overridable as `--config.FIELD=VALUE`; `--help` lists them): per stage, our time and a
baseline's time measured in the same run (interleaved repeats, medians), their ratio (ours /
baseline: < 1 is faster), our GFLOP/s and its share of this machine's sgemm peak, measured at
the start of the run with numpy in a process that runs the host's native OpenBLAS kernel
(`blas.Worker`; the peak and the numpy baselines report that kernel). Stages:

  routing     `memory.routing.route` vs the equal-work GEMM, in numpy and in XLA (1M and 10M
              tokens, B=1, 8; a row per baseline)
  encoding    stage-1 `encode.encode_documents` vs HF transformers' backbone (SmolLM2-135M)
  generation  greedy generation vs HF `generate` (SmolLM2-135M, B=1, 8)
  compile     lowering + compile of a qwen3_4b MSA train step (abstract shapes), SmolLM2-MSA's
              load (vs initialising the whole model) and first question (no baseline: "-")

A stage is a module `msa_jax.benchmarks.<stage>` with `run(quick: bool) -> list[dict]`, each
row {"stage", "case", "ours_s", "baseline", "baseline_s", "flops" (float or None)}; a stage
whose baseline is not installed returns no rows. `quick` runs tiny sizes in seconds (the
suite's smoke test); `json=PATH` also writes {"peak_gflops", "blas", "load_average",
"rows"} there ("-": stdout). The machine's load average is printed: on a shared machine every
number moves with it, the ratios (same run, interleaved) much less.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from msa_jax import runtime, validation
from msa_jax.benchmarks.blas import Worker

STAGES = ("routing", "encoding", "generation", "compile")
# Full-size seconds per stage on the 2-core Zen 2 CPU (2026-12-06, quiet), for the progress
# line's ETA; a loaded machine takes longer.
_TYPICAL_S = {"routing": 50.0, "encoding": 60.0, "generation": 110.0, "compile": 75.0}



def check_stages(stages: Sequence[str]) -> list[str]:
  """The stage names, validated (a UserError names the bad one)."""
  bad = [s for s in stages if s not in STAGES]
  if bad or not stages:
    raise validation.UserError(
        f"--config.stages={','.join(stages)}: unknown stage {bad[0] if bad else '(none)'!r}; "
        f"expected some of {','.join(STAGES)}")
  return list(stages)


def measure_peak(quick: bool) -> tuple[float, str]:
  """(sgemm GFLOP/s of this machine, OpenBLAS kernel name), numpy in a native-kernel worker."""
  with Worker() as blas:
    info = blas.call("info")
    gflops = blas.call("peak", n=1024 if quick else 2048, iters=5 if quick else 10)["gflops"]
  return gflops, info["coretype"]


def derive(row: dict, peak_gflops: float) -> dict:
  """A stage row plus "ratio", "gflops" and "pct_peak" (None where flops is None)."""
  out = dict(row)
  out["ratio"] = row["ours_s"] / row["baseline_s"] if row.get("baseline_s") else None
  flops = row.get("flops")
  out["gflops"] = flops / row["ours_s"] / 1e9 if flops else None
  out["pct_peak"] = 100 * out["gflops"] / peak_gflops if out["gflops"] else None
  return out


def format_table(rows: list[dict]) -> str:
  head = ["stage", "case", "ours s", "baseline", "baseline s", "ratio", "GFLOP/s", "% peak"]
  cells = [[r["stage"], r["case"], f"{r['ours_s']:.4f}", r["baseline"],
            f"{r['baseline_s']:.4f}" if r["baseline_s"] else "-",
            f"{r['ratio']:.2f}" if r["ratio"] is not None else "-",
            f"{r['gflops']:.1f}" if r["gflops"] is not None else "-",
            f"{r['pct_peak']:.0f}%" if r["pct_peak"] is not None else "-"] for r in rows]
  widths = [max(len(x) for x in col) for col in zip(head, *cells)]
  line = lambda xs: " | ".join(x.ljust(w) for x, w in zip(xs, widths))
  return "\n".join([line(head), "-+-".join("-" * w for w in widths)] + [line(c) for c in cells])


def run_suite(stages: Sequence[str], quick: bool, out=sys.stdout) -> dict:
  """Runs the stages in order, printing progress; returns the JSON document."""
  stages = check_stages(stages)
  load = os.getloadavg()
  print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs",
        file=out, flush=True)
  peak, core = measure_peak(quick)
  print(f"sgemm peak {peak:.1f} GFLOP/s (numpy, OpenBLAS {core} kernel)", file=out, flush=True)
  rows, start = [], time.perf_counter()
  for i, stage in enumerate(stages):
    left = sum(_TYPICAL_S[s] for s in stages[i:]) * (0.1 if quick else 1.0)
    print(f"[{i + 1}/{len(stages)}] {stage} (elapsed {time.perf_counter() - start:.0f} s, "
          f"ETA ~{left:.0f} s)", file=out, flush=True)
    try:
      module = importlib.import_module(f"msa_jax.benchmarks.{stage}")
    except ModuleNotFoundError as e:
      if e.name != f"msa_jax.benchmarks.{stage}":
        raise
      print(f"  {stage}: no module msa_jax.benchmarks.{stage}, skipped", file=out, flush=True)
      continue
    got = module.run(quick)
    if not got:
      print(f"  {stage}: baseline not installed, skipped", file=out, flush=True)
    rows += [derive(r, peak) for r in got]
    for r in rows[len(rows) - len(got):]:
      baseline = f", {r['baseline']} {r['baseline_s']:.4f} s" if r["baseline_s"] else ""
      print(f"  {r['case']}: ours {r['ours_s']:.4f} s{baseline}", file=out, flush=True)
  print(format_table(rows), file=out, flush=True)
  return dict(peak_gflops=peak, blas=core, load_average=list(load), rows=rows)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise validation.UserError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  if config is None:
    raise validation.UserError("--config is required (e.g. --config=configs/benchmarks.py)")
  stages = check_stages([s.strip() for s in config.stages.split(",") if s.strip()])
  if config.json not in ("", "-") and not Path(config.json).resolve().parent.is_dir():
    raise validation.UserError(f"--config.json={config.json}: its folder does not exist")
  runtime.start_command()
  doc = run_suite(stages, config.quick)
  if config.json == "-":
    print(json.dumps(doc, indent=1))
  elif config.json:
    tmp = config.json + ".tmp"
    with open(tmp, "w") as f:
      json.dump(doc, f, indent=1)
    os.replace(tmp, config.json)


if __name__ == "__main__":
  # Flags are defined only when run as a program (tests import this module).
  config_flags.DEFINE_config_file(
      "config", None, validation.config_help("The benchmark suite", "configs/benchmarks.py",
                                             "configs/benchmarks.py:quick"), lock_config=True)
  validation.run_app(main)
