"""A naive float64 reference of the MSA training forward, one sample at a time.

Written from `shared/design/official-semantics.md` and the config docstrings only; it imports
nothing from `msa_jax`'s routing, attention or loss code. Everything is plain numpy with
explicit loops, so it is slow and only meant for tiny models (tests/test_msa_property.py).

Differences from the official code that `msa_jax` adopts on purpose and this reference follows:
partial last chunks are pooled over their own tokens in both routing and attention, and the
prompt is split at `memory_index` (tokens from it on see the routed memory in router layers).

Parameters are the nested dict of `nn.unbox(MSATransformer(...).init(...))['params']` as numpy
arrays; kernels are [in..., out...] (q_proj [E, H, D], o_proj [H, D, E], lm_head [E, V]).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

IGNORE = -100
TEMPERATURE_RANGE = (0.001, 0.5)


@dataclasses.dataclass
class SampleResult:
  """Reference outputs of one sample.

  Attributes:
    logits: [T, V] prompt logits (pads included; only real tokens are meaningful).
    doc_hidden: list over present documents of [len, E] final-normed hidden states.
    doc_scores: {router layer: [n_docs] document scores}.
    selected: {router layer: list of document indices, by descending score}.
  """

  logits: np.ndarray
  doc_hidden: list
  doc_scores: dict
  selected: dict


# ----------------------------------------------------------------------------- building blocks


def rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
  """scale * x / sqrt(mean(x^2) + eps) over the last axis."""
  return scale * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
  """HF rotate-half RoPE of x [L, heads, D] at positions [L]."""
  d = x.shape[-1]
  out = np.empty_like(x)
  for t in range(x.shape[0]):
    for i in range(d // 2):
      ang = float(positions[t]) * theta ** (-2.0 * i / d)
      c, s = math.cos(ang), math.sin(ang)
      x1, x2 = x[t, :, i], x[t, :, i + d // 2]
      out[t, :, i] = x1 * c - x2 * s
      out[t, :, i + d // 2] = x2 * c + x1 * s
  return out


def silu(x: np.ndarray) -> np.ndarray:
  return x / (1.0 + np.exp(-x))


def mlp(p: dict, x: np.ndarray) -> np.ndarray:
  """SwiGLU: down(silu(gate(x)) * up(x)) for x [L, E]."""
  gate = x @ p["gate_proj"]["kernel"]
  up = x @ p["up_proj"]["kernel"]
  return (silu(gate) * up) @ p["down_proj"]["kernel"]


def project(p: dict, x: np.ndarray, positions: np.ndarray, cfg: Any):
  """Normed input x [L, E] -> q [L, H, D], k [L, J, D] (q/k norm, then RoPE), v [L, J, D]."""
  q = np.einsum("le,ehd->lhd", x, p["q_proj"]["kernel"])
  k = np.einsum("le,ejd->ljd", x, p["k_proj"]["kernel"])
  v = np.einsum("le,ejd->ljd", x, p["v_proj"]["kernel"])
  if cfg.qk_norm:
    q = rms_norm(q, p["q_norm"]["scale"], cfg.norm_eps)
    k = rms_norm(k, p["k_norm"]["scale"], cfg.norm_eps)
  return rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta), v


def attend(q: np.ndarray, keys: list, values: list, num_kv_heads: int) -> np.ndarray:
  """One query row q [H, D] over a list of key/value rows [J, D]: softmax(q.k / sqrt(D)) v."""
  h, d = q.shape
  rep = h // num_kv_heads
  out = np.zeros((h, d))
  for head in range(h):
    j = head // rep
    logits = np.array([q[head] @ k[j] for k in keys]) / math.sqrt(d)
    w = np.exp(logits - logits.max())
    w /= w.sum()
    for wi, v in zip(w, values):
      out[head] += wi * v[j]
  return out


def output_proj(p: dict, out: np.ndarray) -> np.ndarray:
  """[L, H, D] -> [L, E] through o_proj [H, D, E]."""
  return np.einsum("lhd,hde->le", out, p["o_proj"]["kernel"])


def l2_normalize(x: np.ndarray) -> np.ndarray:
  """x / max(||x||, 1e-12) over the last axis."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def chunk_means(x: np.ndarray, chunk_size: int) -> list:
  """Mean of x [len, ...] over consecutive chunks of `chunk_size` real tokens (last partial)."""
  return [x[s:s + chunk_size].mean(axis=0) for s in range(0, x.shape[0], chunk_size)]


# ------------------------------------------------------------------------------ layer ids


def layer_ids(spec, num_layers: int, candidates) -> list:
  """"upper_half" -> candidates >= L // 2; "all" -> candidates; a tuple -> itself (sorted)."""
  if spec == "upper_half":
    return [i for i in candidates if i >= num_layers // 2]
  if spec == "all":
    return list(candidates)
  return sorted(set(spec))


def router_layers(cfg: Any, msa: Any) -> list:
  return layer_ids(msa.arch.router_layers, cfg.num_layers, range(cfg.num_layers))


def aux_layers(cfg: Any, msa: Any) -> list:
  return layer_ids(msa.loss.aux_layers, cfg.num_layers, router_layers(cfg, msa))


# ---------------------------------------------------------------------------------- routing


def route(p: dict, cfg: Any, msa: Any, x_norm: np.ndarray, q: np.ndarray, queries: list,
          doc_norm: list, doc_k: list):
  """Document scores of one sample in one router layer.

  Args:
    p: the layer's attention params.
    x_norm: [T, E] normed prompt hidden; q: [T, H, D] its post-RoPE queries.
    queries: indices of the routing-query tokens (real, query_mask), in order.
    doc_norm: per document, [len, E] normed hidden; doc_k: per document, [len, J, D] post-RoPE k.

  Returns:
    [n_docs] document scores.
  """
  h, d = cfg.num_heads, cfg.head_dim
  rep = h // cfg.num_kv_heads
  cosine = msa.loss.aux_loss.startswith("infonce")
  scale = 1.0 if (msa.arch.decouple_router and cosine) else 1.0 / math.sqrt(d)
  if msa.arch.decouple_router:
    rq = np.einsum("te,ehd->thd", x_norm, p["router_q_proj"]["kernel"])
    rkeys = [chunk_means(np.einsum("le,ejd->ljd", xn, p["router_k_proj"]["kernel"]),
                         msa.arch.chunk_size) for xn in doc_norm]
  else:
    rq = q
    rkeys = [chunk_means(k, msa.arch.chunk_size) for k in doc_k]
  if cosine:
    rq = l2_normalize(rq)
    rkeys = [[l2_normalize(c) for c in chunks] for chunks in rkeys]
  scores = []
  for chunks in rkeys:
    chunk_scores = []
    for key in chunks:
      per_query = []
      for t in queries:
        per_head = [float(rq[t, head] @ key[head // rep]) * scale for head in range(h)]
        per_query.append(np.mean(per_head) if msa.arch.head_reduce == "mean" else max(per_head))
      if msa.arch.query_reduce == "max":
        chunk_scores.append(max(per_query))
      elif msa.arch.query_reduce == "mean":
        chunk_scores.append(np.mean(per_query))
      else:  # "last": the last routing-query token
        chunk_scores.append(per_query[-1])
    scores.append(max(chunk_scores) if msa.arch.chunk_reduce == "max" else np.mean(chunk_scores))
  return np.array(scores)


def top_k_docs(scores: np.ndarray, top_k: int) -> list:
  """The min(top_k, n_docs) best documents by descending score (ties: lower index first)."""
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  return order[:min(top_k, len(scores))]


# ---------------------------------------------------------------------------------- forward


def forward_sample(params: dict, cfg: Any, msa: Any, sample: dict,
                   force_selection: dict | None = None) -> SampleResult:
  """The MSA forward of one sample.

  Args:
    params: numpy parameter tree.
    cfg, msa: ModelConfig and MSAConfig.
    sample: numpy arrays of one sample: doc_tokens [N, G], doc_lengths [N], tokens [T],
      token_mask [T], positions [T], query_mask [T], memory_index (int), doc_positions
      [N, G] or None (document-wise positions 0..len-1).
    force_selection: optional {router layer: document indices} to use instead of the
      reference's own top-k (for near-tied scores); scores are still computed.

  Returns:
    SampleResult.
  """
  emb = params["embed"]["embedding"].astype(np.float64)
  lengths = [int(n) for n in sample["doc_lengths"] if n > 0]
  docs = [emb[sample["doc_tokens"][i, :n]] for i, n in enumerate(lengths)]
  if sample.get("doc_positions") is None:
    doc_pos = [np.arange(n) for n in lengths]
  else:
    doc_pos = [sample["doc_positions"][i, :n] for i, n in enumerate(lengths)]
  x = emb[sample["tokens"]]
  t_len = x.shape[0]
  real = [bool(m) for m in sample["token_mask"]]
  queries = [t for t in range(t_len) if real[t] and sample["query_mask"][t]]
  mem_index = int(sample["memory_index"])
  routers = router_layers(cfg, msa)
  result = SampleResult(logits=None, doc_hidden=[], doc_scores={}, selected={})

  for layer in range(cfg.num_layers):
    lp = params[f"layers_{layer}"]
    ap = lp["attn"]
    # Documents: each one causal within itself.
    doc_norm, doc_k, doc_v = [], [], []
    for i, h in enumerate(docs):
      xn = rms_norm(h, lp["attn_norm"]["scale"], cfg.norm_eps)
      q, k, v = project(ap, xn, doc_pos[i], cfg)
      out = np.stack([attend(q[t], list(k[:t + 1]), list(v[:t + 1]), cfg.num_kv_heads)
                      for t in range(h.shape[0])])
      h = h + output_proj(ap, out)
      docs[i] = h + mlp(lp["mlp"], rms_norm(h, lp["mlp_norm"]["scale"], cfg.norm_eps))
      doc_norm.append(xn)
      doc_k.append(k)
      doc_v.append(v)
    # The prompt: causal over its real tokens, plus the routed memory in router layers.
    xn = rms_norm(x, lp["attn_norm"]["scale"], cfg.norm_eps)
    q, k, v = project(ap, xn, sample["positions"], cfg)
    mem_k, mem_v = [], []
    if layer in routers:
      scores = route(ap, cfg, msa, xn, q, queries, doc_norm, doc_k)
      chosen = top_k_docs(scores, msa.arch.top_k)
      if force_selection and layer in force_selection:
        chosen = list(force_selection[layer])
      result.doc_scores[layer], result.selected[layer] = scores, chosen
      for i in chosen:
        mem_k += chunk_means(doc_k[i], msa.arch.chunk_size)
        mem_v += chunk_means(doc_v[i], msa.arch.chunk_size)
    out = np.zeros((t_len, cfg.num_heads, cfg.head_dim))
    for t in range(t_len):
      if not real[t]:
        continue  # pads: attention output 0
      own = [s for s in range(t + 1) if real[s]]
      keys, values = [k[s] for s in own], [v[s] for s in own]
      if t >= mem_index:
        keys, values = mem_k + keys, mem_v + values
      out[t] = attend(q[t], keys, values, cfg.num_kv_heads)
    x = x + output_proj(ap, out)
    x = x + mlp(lp["mlp"], rms_norm(x, lp["mlp_norm"]["scale"], cfg.norm_eps))

  final = params["final_norm"]["scale"]
  head = emb.T if cfg.tie_embeddings else params["lm_head"]["kernel"]
  result.logits = rms_norm(x, final, cfg.norm_eps) @ head
  result.doc_hidden = [rms_norm(h, final, cfg.norm_eps) for h in docs]
  return result


# ----------------------------------------------------------------------------------- losses


def log_softmax(z: np.ndarray) -> np.ndarray:
  m = z.max()
  return z - m - math.log(np.exp(z - m).sum())


def aux_loss_sample(msa: Any, scores: np.ndarray, labels: np.ndarray,
                    bias: float | None) -> float:
  """One sample's routing loss from its present documents' scores and 0/1 labels."""
  y = labels.astype(np.float64)
  n = len(scores)
  method = msa.loss.aux_loss
  if method == "bce":
    total = 0.0
    for j in range(n):
      sign = 1.0 if y[j] > 0 else -1.0
      total += -math.log(1.0 / (1.0 + math.exp(-(scores[j] + bias) * sign)))
    return total / n
  tau = min(max(msa.loss.temperature, TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1])
  z = scores / tau
  if method in ("infonce", "infonce_focal"):
    logp = log_softmax(z)
    total = 0.0
    for j in range(n):
      if y[j] > 0:
        w = (1.0 - math.exp(logp[j])) ** msa.loss.focal_gamma if method == "infonce_focal" else 1.0
        total += -w * logp[j] * y[j]
    return total / max(y.sum(), 1.0)
  # Decoupled: each positive competes with the negatives only (max-shifted, +1e-10 in logs).
  e = np.exp(z - z.max())
  neg = sum(e[j] for j in range(n) if y[j] == 0)
  total = 0.0
  for j in range(n):
    if y[j] <= 0:
      continue
    if method == "infonce_decouple":
      total += -(z[j] - z.max() - math.log(e[j] + neg + 1e-10)) * y[j]
    else:  # infonce_decouple_focal
      p = e[j] / (e[j] + neg)
      total += -((1.0 - p) ** msa.loss.focal_gamma) * math.log(p + 1e-10) * y[j]
  if method == "infonce_decouple":
    return total / max(y.sum(), 1.0)
  return total / (y.sum() + 1e-6)


def losses(results: list, samples: list, params: dict, cfg: Any, msa: Any) -> dict:
  """lm_loss, aux_loss and the weighted total over a batch of reference results.

  lm: shifted cross-entropy, the mean over every non-ignored target of the batch (0 if none).
  aux: the mean over (aux layer, sample) pairs of each sample's routing loss.
  """
  nll, count = 0.0, 0
  for res, s in zip(results, samples):
    labels = s["labels"]
    for t in range(len(labels) - 1):
      target = int(labels[t + 1])
      if target == IGNORE:
        continue
      nll += -log_softmax(res.logits[t])[target]
      count += 1
  lm = nll / count if count else 0.0
  bias = float(params["aux_bias"]) if msa.loss.aux_loss == "bce" else None
  terms = []
  for layer in aux_layers(cfg, msa):
    for res, s in zip(results, samples):
      n = len(res.doc_scores[layer])
      terms.append(aux_loss_sample(msa, res.doc_scores[layer],
                                   np.asarray(s["route_labels"][:n]), bias))
  aux = float(np.mean(terms)) if terms else 0.0
  loss = msa.loss.lm_weight * lm + msa.loss.aux_weight * aux
  return {"lm_loss": lm, "aux_loss": aux, "loss": loss}
