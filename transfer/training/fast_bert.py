"""A lean forward pass for BERT-architecture encoders (BERT, BioBERT, PubMedBERT, MiniLM, ...).

It runs on the Hugging Face module's own parameters (nothing is copied, so saving, loading and the optimizer
see the usual module) and computes the same function as ``BertModel(...).last_hidden_state``, with three
differences in *how*, not *what*:

* **Only what the head reads.** A sentence-level head (classification, regression, multilabel) reads the
  [CLS] vector alone, so the last layer computes keys and values for every token but queries, attention
  output and feed-forward for [CLS] only. That removes about 10/12 of one layer's matmul work (about 14% of
  a 6-layer encoder, in the forward and the backward pass). Token-level heads get every position.
* **Attention.** Training on the CPU uses the explicit softmax(QK^T)V path, whose backward is several times
  faster there than the fused kernel's; inference, and training on CUDA, use ``scaled_dot_product_attention``,
  whose CPU kernel the native path feeds keys padded to a multiple of 16 (``key_padding``).
* **bf16 end to end** (``compute_dtype``, the profile's ``bf16_compute = "native"``). Under ``torch.autocast``
  the weights stay fp32, every matmul casts its inputs, and the residual stream, LayerNorm and dropout run in
  fp32 between them. Natively the embeddings are summed and normalised in fp32 and cast once; from there every
  layer computes in bf16 (LayerNorm and softmax accumulate in fp32 inside their kernels), each weight is cast
  once per forward (a differentiable cast, so the optimizer keeps its fp32 weights and the gradients arrive in
  fp32), the query, key and value projections run as one matmul with the 1/sqrt(d) scale folded into the query
  weights, and padding enters the scores as an additive bias. The output is cast back to fp32 for the heads.
  Without gradients (evaluation) the cast weights are reused until a weight changes.
* **Dropout masks on the CPU** come from a :class:`~transfer.training.masks.MaskSource` (seeded SFC64 streams
  cut into 16-bit uniforms) instead of ``torch.bernoulli_``, which was a quarter of a training step. Each task
  has a source of its own, seeded from (seed, task), so a task draws the same masks alone and beside a partner
  (``transfer.training.streams``).
  On CUDA the native dropout is used, from torch's generator, whose state is kept per task the same way.

``unsupported_reason`` says why an encoder cannot take this path (another architecture, relative position
embeddings, ...); callers then use the Hugging Face forward and record which one ran.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transfer.training.masks import MaskSource

_LAYER_PARAMS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")


def unsupported_reason(encoder: nn.Module) -> str | None:
    """None when ``encoder`` is a plain BERT encoder this module can run; else what is different."""
    config = getattr(encoder, "config", None)
    if config is None or getattr(config, "model_type", None) != "bert":
        return f"model type {getattr(config, 'model_type', type(encoder).__name__)!r} is not 'bert'"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {config.position_embedding_type!r} (only 'absolute' is implemented)"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "decoder / cross-attention configuration"
    if getattr(config, "chunk_size_feed_forward", 0):
        return "chunked feed-forward"
    names = {name for name, _ in encoder.named_parameters()}
    needed = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
              "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight"]
    needed += [f"encoder.layer.{i}.{part}.weight" for i in range(config.num_hidden_layers) for part in _LAYER_PARAMS]
    missing = [name for name in needed if name not in names]
    if missing:
        return f"parameters not laid out like BertModel (missing {missing[0]})"
    return None


def explicit_attention(x: torch.Tensor) -> bool:
    """True where the explicit attention path is the faster one: with gradients, on the CPU."""
    return torch.is_grad_enabled() and x.device.type == "cpu"


KEY_MULTIPLE = 16


def key_padding(x: torch.Tensor) -> int:
    """Masked key positions to append before the fused attention kernel on the CPU, for ``x`` (batch, length, ...).

    torch's CPU attention kernel runs far slower on key lengths that are not a multiple of 16; with the keys padded
    (and the [CLS] query contiguous, ``_layer``) native evaluation ran 13-15% faster on a 2-core AMX Xeon (README,
    Performance). Padded keys carry the mask's -inf-like bias, so each weighs exactly zero; only the kernel's
    summation order, hence bf16 rounding, changes. Not used with gradients on the CPU (the explicit path) nor on
    CUDA.
    """
    if x.device.type != "cpu" or explicit_attention(x):
        return 0
    return -x.shape[1] % KEY_MULTIPLE


class FastDropout(nn.Module):
    """``nn.Dropout`` whose CPU masks come from a :class:`MaskSource`; CUDA tensors use the native kernel."""

    def __init__(self, p: float, source: MaskSource):
        super().__init__()
        self.p = p
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.source)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def dropout(x: torch.Tensor, p: float, training: bool, source: MaskSource | None) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if source is None or x.device.type != "cpu":
        return F.dropout(x, p, True)
    # a scaled mask in x's dtype: about 3x cheaper (forward + backward) than multiplying by the boolean mask
    return x * source.scaled_mask(x.shape, p, x.dtype)


class FastBertEncoder:
    """Callable forward over a Hugging Face ``BertModel``'s parameters (see the module docstring)."""

    def __init__(self, encoder: nn.Module, source: MaskSource | None, compute_dtype: torch.dtype | None = None):
        reason = unsupported_reason(encoder)
        if reason is not None:
            raise ValueError(f"the fast BERT forward cannot run this encoder: {reason}")
        from transformers.activations import ACT2FN

        config = encoder.config
        self.encoder = encoder
        self.source = source
        self.layers = config.num_hidden_layers
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.eps = config.layer_norm_eps
        self.hidden_dropout = config.hidden_dropout_prob
        self.attention_dropout = config.attention_probs_dropout_prob
        self.activation = ACT2FN[config.hidden_act]
        self.compute_dtype = compute_dtype
        self._cast_cache: tuple[tuple, dict[str, torch.Tensor]] | None = None  # (weight versions, cast weights)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                 params: dict[str, torch.Tensor] | None = None, cls_only: bool = False) -> torch.Tensor:
        """Last hidden states, (batch, length, hidden); (batch, 1, hidden) with ``cls_only``.

        ``params`` replaces the module's parameters by name (as ``torch.func.functional_call`` would).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        named = dict(self.encoder.named_parameters())
        if params:
            named.update(params)
        training = self.encoder.training
        x = self._embed(named, input_ids, token_type_ids, training)
        keep = attention_mask[:, None, None, :].bool()
        native = self.compute_dtype is not None and not torch.is_autocast_enabled(x.device.type)
        if native:  # under autocast (the look-ahead probes) the layers run as autocast has them
            x = x.to(self.compute_dtype)
            named = self._native_weights(named, bool(params))
            keep = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill_(~keep, torch.finfo(x.dtype).min)
            # the layers pad their keys to the bias's width (see key_padding)
            keep = F.pad(keep, (0, key_padding(x)), value=torch.finfo(x.dtype).min)
        for i in range(self.layers):
            last = i == self.layers - 1
            x = self._layer(named, f"encoder.layer.{i}.", x, keep, training, cls_only and last)
        return x.float() if native else x

    def _native_weights(self, named: dict[str, torch.Tensor], replaced: bool) -> dict[str, torch.Tensor]:
        """The layers' weights cast to ``compute_dtype``, with the fused, pre-scaled query/key/value projection."""
        layers = {n: w for n, w in named.items() if n.startswith("encoder.layer.")}
        reuse = not torch.is_grad_enabled() and not replaced
        versions = tuple((id(w), w._version) for w in layers.values()) if reuse else None
        if reuse and self._cast_cache is not None and self._cast_cache[0] == versions:
            return {**named, **self._cast_cache[1]}
        scale = 1.0 / math.sqrt(self.head_dim)
        cast = {n: (w * scale if ".attention.self.query." in n else w).to(self.compute_dtype)  # scaled, then rounded
                for n, w in layers.items()}
        for i in range(self.layers):
            prefix = f"encoder.layer.{i}.attention.self."
            for part in ("weight", "bias"):
                q, k, v = (cast[f"{prefix}{name}.{part}"] for name in ("query", "key", "value"))
                cast[f"{prefix}qkv.{part}"] = torch.cat([q, k, v])
                cast[f"{prefix}kv.{part}"] = cast[f"{prefix}qkv.{part}"][q.shape[0]:]
        self._cast_cache = (versions, cast) if reuse else None
        return {**named, **cast}

    def _embed(self, w, input_ids, token_type_ids, training):
        length = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(length, device=input_ids.device)
        x = (F.embedding(input_ids, w["embeddings.word_embeddings.weight"])
             + F.embedding(positions, w["embeddings.position_embeddings.weight"])[None]
             + F.embedding(token_type_ids, w["embeddings.token_type_embeddings.weight"]))
        x = F.layer_norm(x, x.shape[-1:], w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        return dropout(x, self.hidden_dropout, training, self.source)

    def _layer(self, w, prefix, x, keep, training, cls_only):
        def linear(name, inputs):
            return F.linear(inputs, w[prefix + name + ".weight"], w[prefix + name + ".bias"])

        def norm(name, inputs):
            return F.layer_norm(inputs, inputs.shape[-1:], w[prefix + name + ".weight"], w[prefix + name + ".bias"], self.eps)

        batch, length, hidden = x.shape
        query_in = x[:, :1] if cls_only else x
        if cls_only and not torch.is_grad_enabled():
            # without gradients F.linear sends this strided slice to a batched matmul over a copied, batch-expanded
            # weight (64 x 384 x 384 for MiniLM at batch 64); contiguous, it is one addmm.
            # With gradients it is one addmm already, and stays as it was, bit for bit.
            query_in = query_in.contiguous()
        fused = prefix + "attention.self.qkv.weight" in w  # the native path: one projection, the scale folded in
        if fused and not cls_only:
            q, k, v = (self._split(t) for t in linear("attention.self.qkv", x).split(hidden, dim=-1))
        elif fused:
            q = self._split(linear("attention.self.query", query_in))
            k, v = (self._split(t) for t in linear("attention.self.kv", x).split(hidden, dim=-1))
        else:
            q = self._split(linear("attention.self.query", query_in))
            k = self._split(linear("attention.self.key", x))
            v = self._split(linear("attention.self.value", x))
        if explicit_attention(x):
            # scores stay in the matmul's dtype; softmax accumulates in fp32 internally
            if fused:  # keep is an additive bias here, q already scaled
                scores = torch.matmul(q, k.transpose(-1, -2)) + keep
            else:
                scores = torch.matmul(q * (1.0 / math.sqrt(self.head_dim)), k.transpose(-1, -2))
                scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores, dim=-1)
            probs = dropout(probs, self.attention_dropout, training, self.source)
            context = torch.matmul(probs, v)
        else:  # inference, and training on CUDA (whose fused kernels apply attention dropout themselves)
            p = self.attention_dropout if training else 0.0
            k, v = k.to(q.dtype), v.to(q.dtype)
            pad = keep.shape[-1] - k.shape[-2]  # the native path's bias is wider when the keys are to be padded
            if pad:
                k, v = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p, scale=1.0 if fused else None)
        context = context.transpose(1, 2).reshape(batch, query_in.shape[1], hidden)
        attended = dropout(linear("attention.output.dense", context), self.hidden_dropout, training, self.source)
        x = norm("attention.output.LayerNorm", attended + query_in)
        inner = self.activation(linear("intermediate.dense", x))
        out = dropout(linear("output.dense", inner), self.hidden_dropout, training, self.source)
        return norm("output.LayerNorm", out + x)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        batch, length, _ = t.shape
        return t.view(batch, length, self.heads, self.head_dim).transpose(1, 2)
