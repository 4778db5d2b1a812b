"""Backbone hyperparameters, the one table of model presets, and the MSA config (its
architecture, loss and runtime parts)."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a Qwen3/Llama-style decoder.

  Attributes:
    vocab_size: number of token embeddings (V).
    embed_dim: residual stream width (E); HF `hidden_size`.
    mlp_dim: SwiGLU hidden width (F); HF `intermediate_size`.
    num_layers: number of decoder blocks; HF `num_hidden_layers`.
    num_heads: query heads (H).
    num_kv_heads: key/value heads (J); H must be a multiple of J (GQA).
    head_dim: per-head width (D). Not necessarily embed_dim // num_heads (Qwen3 uses 128).
    rope_theta: RoPE base.
    norm_eps: RMSNorm epsilon, shared by every norm in the model.
    qk_norm: per-head RMSNorm on q and k before RoPE (Qwen3: True, Llama: False).
    tie_embeddings: the LM head reuses the token embedding matrix.
    max_position: longest position the model was trained for (informational; RoPE has no limit).
  """

  vocab_size: int
  embed_dim: int
  mlp_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  qk_norm: bool = True
  tie_embeddings: bool = True
  max_position: int = 32_768

  def __post_init__(self):
    for name in ("vocab_size", "embed_dim", "mlp_dim", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_position"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for rotate-half RoPE")
    if not self.rope_theta > 0:
      raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
    if not self.norm_eps > 0:
      raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  def layer_matmul_weights(self) -> int:
    """Weights of one layer's matmuls (q, k, v, o and the SwiGLU MLP's three): a token costs
    twice as many FLOPs through them, plus its attention (4 H D per key it sees)."""
    e, h, j, d = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim
    return 2 * e * h * d + 2 * e * j * d + 3 * e * self.mlp_dim


# Real dimensions of the published checkpoints (their HF config.json), plus `tiny` for tests.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=512, embed_dim=64, mlp_dim=128, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, rope_theta=10_000.0, norm_eps=1e-6, qk_norm=True, tie_embeddings=False,
        max_position=2048),
    "smollm2_135m": ModelConfig(
        vocab_size=49_152, embed_dim=576, mlp_dim=1536, num_layers=30, num_heads=9,
        num_kv_heads=3, head_dim=64, rope_theta=100_000.0, norm_eps=1e-5, qk_norm=False,
        tie_embeddings=True, max_position=8192),
    "qwen3_0_6b": ModelConfig(
        vocab_size=151_936, embed_dim=1024, mlp_dim=3072, num_layers=28, num_heads=16,
        num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True,
        tie_embeddings=True, max_position=40_960),
    "qwen3_1_7b": ModelConfig(
        vocab_size=151_936, embed_dim=2048, mlp_dim=6144, num_layers=28, num_heads=16,
        num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True,
        tie_embeddings=True, max_position=40_960),
    "qwen3_4b": ModelConfig(
        vocab_size=151_936, embed_dim=2560, mlp_dim=9728, num_layers=36, num_heads=32,
        num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True,
        tie_embeddings=True, max_position=40_960),
}


def get_preset(name: str) -> ModelConfig:
  """Returns the preset called `name`; the error lists the known names."""
  try:
    return PRESETS[name]
  except KeyError:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


AUX_LOSSES = ("infonce", "infonce_focal", "infonce_decouple", "infonce_decouple_focal", "bce")
_REDUCES = {"head_reduce": ("mean", "max"), "query_reduce": ("max", "mean", "last"),
            "chunk_reduce": ("max", "mean")}


def _layer_spec(part: str, name: str, value):
  """A layer choice as "upper_half" / "all" / a tuple (lists become tuples)."""
  if isinstance(value, list):
    return tuple(value)
  if not isinstance(value, (str, tuple)):
    raise ValueError(f"{part}.{name} must be a string or a tuple of ints, got {value!r}")
  return value


@dataclasses.dataclass(frozen=True)
class MSAArch:
  """What the MSA forward and inference compute (paper section 3): the part of the MSA config
  that a memory bank and the routing depend on. No loss setting lives here, so a loss change
  can never change how documents are encoded or scored.

  Attributes:
    router_layers: which layers read the memory: "upper_half" (layers L//2 .. L-1, the
      default), "all", or an explicit tuple of layer indices.
    top_k: documents selected per sample and router layer (k = min(top_k, documents present)).
    chunk_size: P, tokens per pooled chunk; a document's last chunk may be partial.
    decouple_router: route with separate projections router_q_proj / router_k_proj (paper);
      False routes with the attention's own q (after norm and RoPE) and k.
    router_bias: the decoupled router projections add a learned bias (zero-initialised). With
      cosine routing this is what centring the states does: a pretrained LM's states share a
      large common direction that a bias can cancel (see configs/router_adapt.py).
    head_reduce: "mean" | "max" over query heads of the per-head cosine scores.
    query_reduce: "max" | "mean" | "last" over the sample's routing-query tokens.
    chunk_reduce: "max" | "mean" over a document's chunks.
    cosine_routing: L2-normalise the routing queries and pooled routing keys before their dot
      product (cosine scores); False: raw dot products. Always resolved here (the flat
      `msa.cosine_routing` field may be unset, see `MSAConfig`).
  """

  router_layers: str | tuple[int, ...] = "upper_half"
  top_k: int = 16
  chunk_size: int = 64
  decouple_router: bool = True
  router_bias: bool = False
  head_reduce: str = "mean"
  query_reduce: str = "max"
  chunk_reduce: str = "max"
  cosine_routing: bool = True

  def __post_init__(self):
    for name in ("top_k", "chunk_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"MSAConfig.{name} must be a positive int, got {value!r}")
    for name, allowed in _REDUCES.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"MSAConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")
    object.__setattr__(self, "router_layers",
                       _layer_spec("MSAConfig", "router_layers", self.router_layers))
    if not isinstance(self.cosine_routing, bool):
      raise ValueError(f"MSAConfig.cosine_routing must be True, False or None (as the aux loss), "
                       f"got {self.cosine_routing!r}")

  def routing_scale(self, head_dim: int) -> float:
    """Officially 1 for decoupled cosine routing, otherwise 1/sqrt(D) (even if normalised)."""
    return 1.0 if self.decouple_router and self.cosine_routing else head_dim ** -0.5

  def router_layer_ids(self, num_layers: int) -> tuple[int, ...]:
    return _layer_ids(self.router_layers, num_layers, "router_layers", range(num_layers))

  def replace(self, **changes) -> MSAArch:
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class MSALoss:
  """The training objective of the MSA model (`compute_losses`, the train and eval steps).

  Attributes:
    aux_loss: routing loss: "infonce" (paper), "infonce_focal", "infonce_decouple",
      "infonce_decouple_focal" or "bce" (which adds the learned score bias `aux_bias` to the
      model's parameters).
    aux_layers: router layers whose scores feed the aux loss: "upper_half" (router layers
      >= L//2, the official rule), "all" router layers, or a tuple of layer indices.
    temperature: InfoNCE temperature, a constant (clamped to [0.001, 0.5] as officially).
    focal_gamma: exponent of the focal variants' (1 - p)^gamma weight.
    bce_bias_init: initial value of the BCE variant's learned score bias.
    batch_negatives: the routing loss of each sample ranks its positive against every document
      of the batch (B * N - 1 negatives; the other samples' documents are encoded anyway), not
      only against its own N - 1. Copies of a sample's positive elsewhere in the batch are
      left out of its ranking. Routing recall metrics stay per sample.
    answer_query_weight: w_q, the weight inside L_aux of a second routing loss whose
      routing queries are the prompt tokens that predict the answer, each ranking the
      sample's positive against every document of the batch (needs `batch_negatives`):
      L_aux = L_route + w_q * L_answer_query. It asks the states that generate the answer to
      carry the question's key, which attention needs to choose the right one of several
      routed documents; routing and inference are unchanged. 0 (the default) is the paper's.
    answer_attention_weight: w_a, the weight inside L_aux of a loss on the memory attention
      of the prompt tokens that predict the answer (`+ w_a * L_answer_attention`): per query
      head, -log of the softmax mass that the attention's own logits put on the positive
      documents' chunks among the chunks of all the sample's documents, routed or not (so it
      trains whatever top_k routes). It asks the copy to read the right one of several
      documents and nothing else; the model and inference are unchanged. 0 (the default) is
      the paper's.
    lm_weight, aux_weight, answer_weight: weights of the total loss
      lm_weight * L_LM + aux_weight * L_aux + answer_weight * L_answer.
  """

  aux_loss: str = "infonce"
  aux_layers: str | tuple[int, ...] = "upper_half"
  temperature: float = 0.05
  focal_gamma: float = 2.0
  bce_bias_init: float = -20.0
  batch_negatives: bool = False
  answer_query_weight: float = 0.0
  answer_attention_weight: float = 0.0
  lm_weight: float = 1.0
  aux_weight: float = 0.1
  answer_weight: float = 0.0

  def __post_init__(self):
    if self.aux_loss not in AUX_LOSSES:
      raise ValueError(f"MSAConfig.aux_loss={self.aux_loss!r}; expected one of {AUX_LOSSES}")
    object.__setattr__(self, "aux_layers", _layer_spec("MSAConfig", "aux_layers",
                                                       self.aux_layers))
    if not self.temperature > 0:
      raise ValueError(f"MSAConfig.temperature must be > 0, got {self.temperature!r}")
    if not self.answer_query_weight >= 0:
      raise ValueError(f"MSAConfig.answer_query_weight must be >= 0, got "
                       f"{self.answer_query_weight!r}")
    if not self.answer_attention_weight >= 0:
      raise ValueError(f"MSAConfig.answer_attention_weight must be >= 0, got "
                       f"{self.answer_attention_weight!r}")
    if self.answer_query_weight and not self.batch_negatives:
      raise ValueError(f"MSAConfig.answer_query_weight={self.answer_query_weight!r} needs "
                       "batch_negatives=True (its queries rank every document of the batch)")

  def aux_layer_ids(self, router_ids: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """The aux layers among the model's router layers `router_ids` (of `num_layers`)."""
    ids = _layer_ids(self.aux_layers, num_layers, "aux_layers", router_ids)
    stray = sorted(set(ids) - set(router_ids))
    if stray:
      raise ValueError(f"MSAConfig.aux_layers {stray} are not router layers {tuple(router_ids)}")
    return ids

  def replace(self, **changes) -> MSALoss:
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class MSARuntime:
  """How the MSA model runs; changes neither its parameters nor its results (beyond float
  rounding).

  Attributes:
    remat: rematerialise each layer in the backward pass (saves activation memory).
    kernel_impl: how router layers score chunks and attend to the routed memory: "xla"
      (dense jnp), "pallas" (the fused routing-score and top-k block-sparse attention kernels
      of `pallas_kernels`, in interpret mode where there is no GPU), or "auto" (pallas on GPU
      when the head dim suits the kernels, xla elsewhere).
  """

  remat: bool = False
  kernel_impl: str = "auto"

  def __post_init__(self):
    if self.kernel_impl not in ("auto", "xla", "pallas"):
      raise ValueError(f"MSAConfig.kernel_impl={self.kernel_impl!r}; expected 'auto', "
                       "'xla' or 'pallas'")

  def replace(self, **changes) -> MSARuntime:
    return dataclasses.replace(self, **changes)


_PARTS = {"arch": MSAArch, "loss": MSALoss, "runtime": MSARuntime}
# The flat field names of a config's `msa` section -> the part that holds each. The flat
# `cosine_routing` may be None ("as the aux loss"); MSAArch holds it resolved.
FIELD_PARTS: dict[str, str] = {f.name: part for part, cls in _PARTS.items()
                               for f in dataclasses.fields(cls)}
# The runtime fields: a run may change them on resume (they change neither parameters nor math).
RUNTIME_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MSARuntime))
FIELD_DEFAULTS: dict[str, object] = {
    **{f.name: f.default for cls in _PARTS.values() for f in dataclasses.fields(cls)},
    "cosine_routing": None}


def split_msa_fields(fields: Mapping[str, object]) -> tuple[MSAArch, MSALoss, MSARuntime]:
  """The flat fields of a config's `msa` section -> (architecture, loss, runtime) parts.

  `cosine_routing` None (or absent) follows the official rule, which ties it to the loss:
  cosine for the InfoNCE family, raw dot products for "bce". It is resolved here, once, so
  the architecture part never depends on the loss afterwards. An unknown field is a
  ValueError naming the closest known one.
  """
  parts = {name: {} for name in _PARTS}
  for name, value in fields.items():
    if name not in FIELD_PARTS:
      close = difflib.get_close_matches(name, FIELD_PARTS, n=1)
      hint = f"; did you mean {close[0]!r}?" if close else f"; known: {sorted(FIELD_PARTS)}"
      raise ValueError(f"MSAConfig has no field {name!r}{hint}")
    parts[FIELD_PARTS[name]][name] = value
  loss = MSALoss(**parts["loss"])
  arch = dict(parts["arch"])
  if arch.get("cosine_routing") is None:
    arch["cosine_routing"] = loss.aux_loss.startswith("infonce")
  return MSAArch(**arch), loss, MSARuntime(**parts["runtime"])


@dataclasses.dataclass(frozen=True, init=False)
class MSAConfig:
  """Memory Sparse Attention on top of a backbone (paper section 3; official `msa_config`):
  an architecture part (`MSAArch`: what the forward and inference compute), a loss part
  (`MSALoss`: the training objective) and a runtime part (`MSARuntime`: remat, kernels).

  Build it from the flat fields a config's `msa` section sets (any of the three parts'
  fields, e.g. `MSAConfig(top_k=16, chunk_size=64, aux_loss="bce")`; see
  `split_msa_fields`), or from parts (`MSAConfig(arch=..., loss=..., runtime=...)`, a part
  not given is its default). Read fields from the parts: `msa.arch.top_k`,
  `msa.loss.aux_weight`, `msa.runtime.kernel_impl`. Layers, the engine and bank fingerprints
  take `arch` (and the runtime where they run kernels); the loss and the train step `loss`.
  """

  arch: MSAArch
  loss: MSALoss
  runtime: MSARuntime

  def __init__(self, arch: MSAArch | None = None, loss: MSALoss | None = None,
               runtime: MSARuntime | None = None, **fields):
    given = {"arch": arch, "loss": loss, "runtime": runtime}
    if fields:
      if any(v is not None for v in given.values()):
        raise ValueError("MSAConfig takes either flat fields or parts (arch, loss, runtime), "
                         f"not both; got fields {sorted(fields)}")
      given = dict(zip(_PARTS, split_msa_fields(fields)))
    for name, cls in _PARTS.items():
      value = cls() if given[name] is None else given[name]
      if not isinstance(value, cls):
        raise ValueError(f"MSAConfig.{name} must be an {cls.__name__}, got {value!r}")
      object.__setattr__(self, name, value)

  def aux_layer_ids(self, num_layers: int) -> tuple[int, ...]:
    """The loss's aux layers among the architecture's router layers (both resolved)."""
    return self.loss.aux_layer_ids(self.arch.router_layer_ids(num_layers), num_layers)

  def replace(self, **changes) -> MSAConfig:
    """A copy with flat fields changed in their parts (`msa.replace(top_k=4, remat=True)`).

    Nothing is re-resolved: a changed `aux_loss` keeps the routing math of `arch`; pass
    `cosine_routing` to change that too (None: as the new loss).
    """
    parts = {"arch": {}, "loss": {}, "runtime": {}}
    for name, value in changes.items():
      if name not in FIELD_PARTS:
        split_msa_fields({name: value})  # raises the did-you-mean error
      parts[FIELD_PARTS[name]][name] = value
    new = {name: getattr(self, name).replace(**parts[name]) for name in ("loss", "runtime")}
    if "cosine_routing" in parts["arch"] and parts["arch"]["cosine_routing"] is None:
      parts["arch"]["cosine_routing"] = new["loss"].aux_loss.startswith("infonce")
    return MSAConfig(arch=self.arch.replace(**parts["arch"]), **new)


def _layer_ids(spec, num_layers: int, name: str, layers) -> tuple[int, ...]:
  """Resolves "upper_half" / "all" / explicit indices against `layers`."""
  if spec == "upper_half":
    return tuple(i for i in layers if i >= num_layers // 2)
  if spec == "all":
    return tuple(layers)
  if isinstance(spec, str):
    raise ValueError(f"MSAConfig.{name}={spec!r}; expected 'upper_half', 'all' or layer indices")
  ids = tuple(sorted(set(spec)))
  bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < num_layers]
  if bad or not ids:
    raise ValueError(f"MSAConfig.{name}={spec!r}: indices must be in [0, {num_layers})"
                     + (f"; bad: {bad}" if bad else "; got none"))
  return ids
