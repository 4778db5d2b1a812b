"""The GPU check in one command: `python scripts/gpu_check.py [--cpu_smoke] [--out=DIR]`.

Run on one H200 (JAX >= 0.11 with CUDA) through `scripts/gpu_check.sh`, which installs the
carried wheels first. Each part runs in its own subprocess with its own time limit (a hang or
crash costs that part only; the whole check stays within `--budget_s`, 450 s by default: the
8 minutes less start-up and installs; x3 with --cpu_smoke),
and writes DIR/gpu_check.json (the device, versions, and per part: status, seconds, results or
the error) and DIR/gpu_check.log (every part's output). Parts:

  routing_kernel    the Pallas routing kernel's GB/s vs the H200's 4.8 TB/s at 1M and 10M
                    chunks, Qwen3-4B routing sizes (H=32, J=8, D=128), bf16
  sparse_attention  the Pallas sparse attention's TFLOP/s vs the XLA reference (decode, prefill)
  bank_routing      `routing.route` over a 100M-token bank at Qwen3-4B sizes, bf16: the routing
                    keys on the device (the K/V content stays on the host; routing never reads it)
  train_step        an MSA train step of a Qwen3-0.6B-shaped model, bf16: tokens/s and MFU
                    (6 * parameters * tokens / (step time * 989 TFLOP/s))
  engine            `MSAEngine` prefill and decode tokens/s against a 1M-token bank
                    (Qwen3-0.6B-shaped, random weights, bf16)
  kernel_tests      the compiled kernel tests: `pytest -m gpu tests/test_kernel_*.py`, last
                    (one that runs out of time was seen to hold GPU memory after its kill)

`--cpu_smoke` runs every part at tiny sizes on the CPU (the kernels in interpret mode, the
kernel tests collected only), so the GPU run cannot fail on a typo; the test suite runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

PARTS = ("routing_kernel", "sparse_attention", "bank_routing", "train_step", "engine",
         "kernel_tests")
# Seconds each part may take on the GPU (sum 450 s: the 8 minutes less start-up and installs).
# First H200 runs (2026-12-04): the three benchmarks 10-14 s each; the kernel tests ran past
# 70 s (last: a killed part's process may hold GPU memory a while after it).
LIMITS_S = {"routing_kernel": 25, "sparse_attention": 25, "bank_routing": 25,
            "train_step": 150, "engine": 135, "kernel_tests": 90}
H200_BF16_FLOPS = 989e12  # dense, datasheet
H200_HBM_BYTES_S = 4.8e12

_CPU_SMOKE = flags.DEFINE_bool("cpu_smoke", False, "every part at tiny sizes on the CPU")
_OUT = flags.DEFINE_string("out", None, "output folder (default: $OUT, else ./gpu_check_out)")
_PARTS = flags.DEFINE_list("parts", list(PARTS), f"parts to run, of {', '.join(PARTS)}")
_BUDGET = flags.DEFINE_float("budget_s", 450.0, "wall-clock budget of the whole check")
_PART = flags.DEFINE_string("part", None, "internal: run this one part, write --result")
_RESULT = flags.DEFINE_string("result", None, "internal: where --part writes its JSON")


# ----------------------------------------------------------------------------------------------
# Parts (each returns a JSON-able dict)


def part_kernel_tests(smoke: bool) -> dict:
  tests = sorted(f"tests/{f}" for f in os.listdir(os.path.join(ROOT, "tests"))
                 if f.startswith("test_kernel_") and f.endswith(".py"))
  cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", *tests]
  cmd += ["-q", "--collect-only"] if smoke else ["-v", "--durations=5"]  # -v: a line per test
  # Each line goes to the log as it comes (a part that runs out of time shows how far it got).
  lines = []
  with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True) as proc:
    for line in proc.stdout:
      print(line, end="", flush=True)
      if line.strip():
        lines.append(line.strip())
  if proc.returncode not in (0, 5):  # 5: nothing collected
    raise RuntimeError(f"pytest exited {proc.returncode}: {lines[-1] if lines else ''}")
  return dict(command=" ".join(cmd[2:]), returncode=proc.returncode,
              summary=lines[-1] if lines else "")


def _kernel_config(smoke: bool):
  from configs import kernel_benchmarks
  config = kernel_benchmarks.get_config("small" if smoke else None)
  if not smoke:
    config.update(iters=5, warmup=2)
  return config


def part_routing_kernel(smoke: bool) -> dict:
  from pallas_kernels.routing_scores import benchmark
  config = _kernel_config(smoke)
  if not smoke:
    config.routing_scores.chunks = "1048576,10485760"
  rows = benchmark.run(config)
  for r in rows:
    r["fraction_of_4.8TB/s"] = r["gbps"] * 1e9 / H200_HBM_BYTES_S
  return dict(config=config.to_dict(), rows=rows)


def part_sparse_attention(smoke: bool) -> dict:
  from pallas_kernels.sparse_attention import benchmark
  config = _kernel_config(smoke)
  return dict(config=config.to_dict(), rows=benchmark.run(config))


def part_bank_routing(smoke: bool) -> dict:
  from configs import routing_benchmark as bench_config
  from msa_jax.inference import routing_benchmark
  config = bench_config.get_config("small" if smoke else "paper")
  if not smoke:
    config.iters = 3
  return dict(config=config.to_dict(), rows=routing_benchmark.run(config))


def _random_batch(cfg, b: int, n: int, g: int, t: int, seed: int = 0):
  """A random `MSABatch`: n documents of g tokens per sample, a t-token prompt (its first 8
  tokens route), LM labels on the prompt, document 0 relevant."""
  import numpy as np
  from msa_jax.model import MSABatch
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (b, t), dtype=np.int32)
  query_mask = np.zeros((b, t), bool)
  query_mask[:, :min(8, t)] = True
  route_labels = np.zeros((b, n), np.int32)
  route_labels[:, 0] = 1
  return MSABatch(
      doc_tokens=rng.integers(0, cfg.vocab_size, (b, n, g), dtype=np.int32),
      doc_lengths=np.full((b, n), g, np.int32), tokens=tokens, token_mask=np.ones((b, t), bool),
      positions=np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
      query_mask=query_mask, memory_index=np.zeros((b,), np.int32),
      labels=np.roll(tokens, -1, axis=1), route_labels=route_labels)


def _stages(part: str):
  """A function `done(what)` that prints the seconds since the part started (flushed), so the
  log of a part that runs out of time shows how far it got."""
  start = time.perf_counter()

  def done(what: str) -> None:
    print(f"[{part}] {time.perf_counter() - start:7.1f} s  {what}", flush=True)

  return done


def _init_on_host(fn):
  """fn() (a random initialisation) jitted on the host CPU, its result put on the default
  device. Creating parameters unrolls the layers (`LayerStack`), one fusion per parameter and
  layer: 2,931 fusions for the Qwen3-0.6B-shaped MSA model, which XLA's GPU compiler took
  ~100 s to build on the H200 (2026-12-04) against ~22 s of CPU compile + 16 s of run on
  2 cores."""
  import jax
  with jax.default_device(jax.devices("cpu")[0]):
    out = jax.jit(fn)()
  return jax.device_put(out, jax.devices()[0])


def _median_time(fn, iters: int) -> float:
  import statistics
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def part_train_step(smoke: bool) -> dict:
  import jax
  import jax.numpy as jnp
  from msa_jax.model import MSAConfig, MSATransformer, count_params, get_preset
  from msa_jax.train.optimizer import make_optimizer
  from msa_jax.train.step import init_fn, make_train_step
  done = _stages("train_step")
  preset = "tiny" if smoke else "qwen3_0_6b"
  cfg = get_preset(preset)
  # Rematerialised layers, as a model of this size trains with 16 x 512 memory tokens per
  # sample: without, the step needs ~116 GB of temporaries (XLA's CPU memory analysis), which
  # on the GPU sends XLA into its own slow rematerialisation pass.
  msa = MSAConfig(top_k=4 if smoke else 8, chunk_size=4 if smoke else 64, remat=True)
  b, n, g, t = (2, 4, 16, 16) if smoke else (2, 16, 512, 512)
  dtype = jnp.float32 if smoke else jnp.bfloat16
  model = MSATransformer(cfg, msa, dtype=dtype)
  optimizer = make_optimizer({"learning_rate": 1e-4, "warmup_steps": 1, "total_steps": 100})
  state = _init_on_host(lambda: init_fn(model, optimizer)(jax.random.key(0)))
  jax.block_until_ready(state)
  done("initialised")
  step = make_train_step(model, cfg, msa.loss, optimizer)
  batch = jax.device_put(_random_batch(cfg, b, n, g, t))
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  done("compiled")
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics["loss"])
  compile_s = time.perf_counter() - start
  done("first step")
  holder = [state]

  def one():
    holder[0], m = step(holder[0], batch)
    jax.block_until_ready(m["loss"])

  seconds = _median_time(one, 2 if smoke else 5)
  params = count_params(holder[0].params)
  tokens = b * (n * g + t)
  return dict(preset=preset, dtype=jnp.dtype(dtype).name, batch=dict(B=b, N=n, G=g, T=t),
              params=params, first_step_s=compile_s, step_s=seconds, tokens_per_s=tokens / seconds,
              mfu=6 * params * tokens / seconds / H200_BF16_FLOPS,
              loss=float(metrics["loss"]))


def part_engine(smoke: bool) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from msa_jax.inference import decode, engine as engine_lib
  from msa_jax.memory import encode as encode_lib
  from msa_jax.memory.bank import MemoryBank
  from msa_jax.inference.sampling import SamplingConfig
  from msa_jax.model import MSAConfig, MSATransformer, get_preset, init_params
  done = _stages("engine")
  preset = "tiny" if smoke else "qwen3_0_6b"
  cfg = get_preset(preset)
  msa = MSAConfig(top_k=4 if smoke else 16, chunk_size=4 if smoke else 64)
  bank_tokens, doc_tokens = (4096, 64) if smoke else (1_000_000, 512)
  q, t, new = (2, 16, 4) if smoke else (8, 512, 64)
  dtype = jnp.float32 if smoke else jnp.bfloat16
  model = MSATransformer(cfg, msa)
  params = _init_on_host(lambda: init_params(model, jax.random.key(0)))
  jax.block_until_ready(params)
  done("initialised")
  per_doc = doc_tokens // msa.arch.chunk_size
  docs = bank_tokens // doc_tokens
  chunks = docs * per_doc
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    bank = encode_lib.create_bank(os.path.join(tmp, "bank"), cfg, msa, params, dtype=dtype,
                                  bank_dtype="bfloat16")
    shape = (chunks, cfg.num_kv_heads, cfg.head_dim)
    keys = rng.standard_normal(shape, dtype=np.float32)
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    content = rng.standard_normal(shape, dtype=np.float32).astype(bank.dtype)
    # Every router layer gets the same arrays (their values do not change the work).
    layer = {"keys": keys.astype(bank.dtype), "k": content, "v": content}
    layers = {i: layer for i in msa.arch.router_layer_ids(cfg.num_layers)}
    bank.add([f"d{i}" for i in range(docs)], None, [doc_tokens] * docs, [per_doc] * docs, layers)
    del layers, layer, keys, content
    done(f"bank of {docs} documents written")
    bank = MemoryBank.open(os.path.join(tmp, "bank"))
    eng = engine_lib.MSAEngine(cfg, msa, params, bank, dtype=dtype)
    done("engine built")
    ids = rng.integers(0, cfg.vocab_size, (q, t))
    prompts = engine_lib.PromptBatch.from_segments(
        [list(r[:t // 2]) for r in ids], [list(r[t // 2:t // 2 + 8]) for r in ids],
        [list(r[t // 2 + 8:]) for r in ids], position_offset=0)
    sampling = SamplingConfig(max_new_tokens=new)

    def prefill():  # the prefill `generate` runs (same cache length: same compiled programs)
      jax.block_until_ready(eng.prefill(prompts, cache_len=decode.decode_slots(t, sampling))
                            .logits)

    def generate():
      eng.generate(prompts, sampling)

    start = time.perf_counter()
    prefill()
    done("first prefill")
    generate()
    done("first generate")
    warm_s = time.perf_counter() - start
    iters = 2 if smoke else 3
    prefill_s = _median_time(prefill, iters)
    generate_s = _median_time(generate, iters)
  decode_s = max(generate_s - prefill_s, 1e-9)  # generate = its prefill + the decode loop
  return dict(preset=preset, bank_tokens=docs * doc_tokens, bank_chunks=chunks, questions=q,
              prompt_tokens=t, new_tokens=new, first_calls_s=warm_s, prefill_s=prefill_s,
              prefill_tokens_per_s=q * t / prefill_s, generate_s=generate_s,
              decode_tokens_per_s=q * new / decode_s)


# ----------------------------------------------------------------------------------------------
# Driver


def device_info() -> dict:
  import jax
  dev = jax.devices()[0]
  return dict(jax=jax.__version__, backend=jax.default_backend(), device=dev.device_kind,
              devices=jax.device_count())


def run_part(name: str, smoke: bool, result_path: str) -> None:
  """Child process: runs one part, writes {"result": ...} or lets the exception escape."""
  if smoke:
    os.environ["JAX_PLATFORMS"] = "cpu"
  result = globals()[f"part_{name}"](smoke)
  with open(result_path, "w") as f:
    json.dump(dict(result=result, device=device_info()), f, default=float)


def check_parts(parts: Sequence[str]) -> list[str]:
  bad = [p for p in parts if p not in PARTS]
  if bad or not parts:
    raise ValueError(f"--parts={','.join(parts)}: unknown part {bad[0] if bad else '(none)'!r}; "
                     f"expected some of {','.join(PARTS)}")
  return list(parts)


def run_check(parts: Sequence[str], smoke: bool, out_dir: str, budget_s: float) -> dict:
  """Runs the parts one by one in subprocesses; writes gpu_check.json and gpu_check.log."""
  os.makedirs(out_dir, exist_ok=True)
  budget_s *= 3 if smoke else 1
  log_path = os.path.join(out_dir, "gpu_check.log")
  doc = dict(cpu_smoke=smoke, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             parts={})
  start = time.perf_counter()
  with open(log_path, "w") as log, tempfile.TemporaryDirectory() as tmp:
    for i, name in enumerate(parts):
      left = budget_s - (time.perf_counter() - start)
      limit = min(LIMITS_S[name] * (3 if smoke else 1), left)
      print(f"[{i + 1}/{len(parts)}] {name} (limit {limit:.0f} s, {left:.0f} s of the budget "
            "left)", flush=True)
      if limit < 5:
        doc["parts"][name] = dict(status="skipped", error="budget spent")
        continue
      result_path = os.path.join(tmp, f"{name}.json")
      cmd = [sys.executable, os.path.abspath(__file__), f"--part={name}",
             f"--result={result_path}"] + (["--cpu_smoke"] if smoke else [])
      log.write(f"===== {name}: {' '.join(cmd)}\n")
      log.flush()
      t0 = time.perf_counter()
      try:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              timeout=limit, check=False)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
      except subprocess.TimeoutExpired:
        status = f"timed out after {limit:.0f} s"
      entry = dict(status=status, seconds=round(time.perf_counter() - t0, 1))
      if status == "ok":
        with open(result_path) as f:
          got = json.load(f)
        entry["result"] = got["result"]
        doc.setdefault("device", got["device"])
      doc["parts"][name] = entry
      print(f"  {status} in {entry['seconds']} s", flush=True)
  doc["seconds"] = round(time.perf_counter() - start, 1)
  doc["ok"] = all(p["status"] == "ok" for p in doc["parts"].values())
  tmp_json = os.path.join(out_dir, "gpu_check.json.tmp")
  with open(tmp_json, "w") as f:
    json.dump(doc, f, indent=1, default=float)
  os.replace(tmp_json, os.path.join(out_dir, "gpu_check.json"))
  return doc


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _PART.value:
    if _PART.value not in PARTS or not _RESULT.value:
      print(f"error: --part={_PART.value!r} needs a known part and --result", file=sys.stderr)
      sys.exit(2)
    run_part(_PART.value, _CPU_SMOKE.value, _RESULT.value)
    return
  try:
    parts = check_parts(_PARTS.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  out = _OUT.value or os.environ.get("OUT") or os.path.join(ROOT, "gpu_check_out")
  doc = run_check(parts, _CPU_SMOKE.value, out, _BUDGET.value)
  print(f"{'all parts ok' if doc['ok'] else 'SOME PARTS FAILED'} in {doc['seconds']} s; "
        f"{os.path.join(out, 'gpu_check.json')}", flush=True)
  sys.exit(0 if doc["ok"] else 1)


if __name__ == "__main__":
  app.run(main)
