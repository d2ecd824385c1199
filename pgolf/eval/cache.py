"""The neural cache as a predictor: a continuous cache over the hidden states of scored tokens.

Grave, Joulin & Usunier (2017), made legal for score-first evaluation. :class:`NeuralCache` wraps
any predictor that gives its hidden states (:class:`~pgolf.eval.predictor.HiddenStates`: the plain
model, or a test-time-trained one). For a scored position ``t`` with hidden state ``h_t`` (the
final state before the head) and the model's distribution ``p_model``:

    p_cache(w | t) = sum_{i in C(t), x_{i+1} = w} exp(theta sim(h_t, h_i)) / sum_{i in C(t)} exp(theta sim(h_t, h_i))
    lam_t          = lam                              (lam_rule="fixed")
                   = lam * H(p_model(. | t)) / log V  (lam_rule="entropy": the model's own entropy, never the target)
    log p(w | t)   = logaddexp(log(1 - lam_t) + log p_model(w | t), log(lam_t) + log p_cache(w | t))

``C(t)``: the cache, the last ``window`` positions inserted (``0``: all of them) of ``t``'s
document (``per_doc``) or of every lane in scoring order. A position ``i`` enters the cache, as the
key ``h_i`` with the label ``x_{i+1}``, only in :meth:`NeuralCache.update`, i.e. after the engine
has scored its chunk; so ``C(t)`` holds only tokens scored before ``t``'s chunk, and every row of
``log p`` is a full normalised distribution (``lam < 1``). An empty cache gives ``p = p_model``
exactly. The lookup and the mixture are :mod:`triton_kernels.neural_cache`'s.

Keys are the hidden states the wrapped predictor scored with (kept from ``log_probs`` and reused in
``update`` for the same batch), inserted before the wrapped predictor's own ``update``.

Scope. With ``per_doc`` the cache of a document depends on that document only, and scores do not
depend on the number of ranks. Across documents (``per_doc=False``) each rank keeps one cache over
the documents it scores, in engine order: the scores then depend on how documents are dealt to
ranks. In ``flat`` and ``sliding`` geometry the stream is one lane: both scopes are the same.
"""
from __future__ import annotations

import math

import torch

from pgolf.config import CacheConfig
from pgolf.config.sections import CACHE_LAM_RULES, CACHE_SIMILARITIES
from pgolf.eval.predictor import ChunkBatch, HiddenStates, Predictor, ScoredBatch, finish_predictor
from triton_kernels.neural_cache import cache_log_probs, mix_log_probs

STREAM = -1  # the one cache key when the cache spans documents


class CacheError(ValueError):
    """A neural-cache parameter or input is invalid; the message names it."""


def _check_params(vocab_size: int, theta: float, lam: float, lam_rule: str, window: int, similarity: str) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise CacheError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not (math.isfinite(theta) and theta > 0):
        raise CacheError(f"cache.theta must be a finite number > 0, got {theta!r}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam < 1.0:
        raise CacheError(f"cache.lam must be in [0, 1), got {lam!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise CacheError(f"cache.window must be an int >= 0 (0: every scored position), got {window!r}")
    if lam_rule not in CACHE_LAM_RULES:
        raise CacheError(f"cache.lam_rule must be one of {', '.join(CACHE_LAM_RULES)}, got {lam_rule!r}")
    if similarity not in CACHE_SIMILARITIES:
        raise CacheError(f"cache.similarity must be one of {', '.join(CACHE_SIMILARITIES)}, got {similarity!r}")


class NeuralCache:
    """A neural cache on top of ``inner`` (module docstring); adaptive (``stateless = False``)."""

    stateless = False

    def __init__(self, inner: Predictor, vocab_size: int, *, theta: float, lam: float, lam_rule: str = "fixed",
                 window: int = 0, per_doc: bool = False, similarity: str = "dot"):
        if not isinstance(inner, HiddenStates):
            raise CacheError(f"the neural cache needs a predictor that gives its hidden states "
                             f"(log_probs_and_hidden); {type(inner).__name__} does not")
        _check_params(vocab_size, theta, lam, lam_rule, window, similarity)
        self.inner, self.vocab_size = inner, vocab_size
        self.theta, self.lam, self.lam_rule = float(theta), float(lam), lam_rule
        self.window, self.per_doc, self.similarity = window, bool(per_doc), similarity
        self.keys: dict[int, torch.Tensor] = {}  # scope (a lane, or STREAM) -> [N, D]
        self.labels: dict[int, torch.Tensor] = {}  # scope -> [N]
        self._scored: tuple[ChunkBatch, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, inner: Predictor, cfg: CacheConfig, vocab_size: int) -> "NeuralCache":
        """A cache with the ``cache.*`` values of ``cfg``."""
        return cls(inner, vocab_size, theta=cfg.theta, lam=cfg.lam, lam_rule=cfg.lam_rule, window=cfg.window,
                   per_doc=cfg.per_doc, similarity=cfg.similarity)

    def __len__(self) -> int:
        """Keys held, over all scopes."""
        return sum(len(v) for v in self.labels.values())

    def _scopes(self, lanes: torch.Tensor) -> torch.Tensor:
        return lanes if self.per_doc else torch.full_like(lanes, STREAM)

    def _hidden(self, batch: ChunkBatch) -> tuple[torch.Tensor, torch.Tensor]:
        lp, h = self.inner.log_probs_and_hidden(batch)
        h = h.detach()
        if h.ndim != 2 or h.shape[0] != batch.num_scored:
            raise CacheError(f"{type(self.inner).__name__}.log_probs_and_hidden returned hidden states of shape "
                             f"{tuple(h.shape)}; expected [n={batch.num_scored}, model_dim]")
        bad = ~torch.isfinite(h).all(dim=1)
        if bool(bad.any()):
            raise CacheError(f"non-finite hidden states at stream positions {batch.positions[bad][:5].tolist()}: "
                             f"the neural cache cannot use them as queries or keys")
        return lp, h

    def log_probs(self, batch: ChunkBatch) -> torch.Tensor:
        lp, h = self._hidden(batch)
        self._scored = (batch, h)
        if self.lam == 0.0 or not self.labels:
            return lp
        n = batch.num_scored
        scopes = self._scopes(batch.lanes[batch.rows])
        log_cache = torch.full((n, self.vocab_size), -math.inf, dtype=torch.float32, device=lp.device)
        count = torch.zeros(n, dtype=torch.int32, device=lp.device)
        for scope in scopes.unique().tolist():
            if scope not in self.labels:
                continue
            idx = torch.nonzero(scopes == scope).squeeze(1)
            keys = self.keys[scope]
            look = cache_log_probs(h[idx].to(keys.dtype), keys, self.labels[scope], theta=self.theta,
                                   vocab_size=self.vocab_size, similarity=self.similarity, validate=False)
            log_cache[idx] = look.log_p.float()
            count[idx] = look.count.to(torch.int32)
        return mix_log_probs(lp, log_cache.to(lp.dtype), lam=self._lam(lp), count=count, validate=False)

    def _lam(self, lp: torch.Tensor) -> float | torch.Tensor:
        """``lam_t`` of each query from the model's own distribution (never the target)."""
        if self.lam_rule == "fixed":
            return self.lam
        entropy = -(lp.detach().exp() * lp.detach()).sum(-1)
        return self.lam * (entropy / math.log(self.vocab_size)).clamp(0.0, 1.0) if self.vocab_size > 1 else \
            torch.zeros_like(entropy)

    def update(self, scored: ScoredBatch) -> None:
        batch = scored.batch
        if self._scored is not None and self._scored[0] is batch:
            h = self._scored[1]
        else:
            h = self._hidden(batch)[1]
        self._scored = None
        self.insert(h, scored.targets, batch.lanes[batch.rows])
        self.inner.update(scored)

    def finish(self, *, out_of_time: bool) -> None:
        """Passes the engine's ``finish`` on to the predictor below (:func:`pgolf.eval.predictor.finish_predictor`)."""
        finish_predictor(self.inner, out_of_time=out_of_time)

    def insert(self, keys: torch.Tensor, labels: torch.Tensor, lanes: torch.Tensor) -> None:
        """Add scored positions: hidden states ``keys [n, D]``, the tokens that followed them
        ``labels [n]``, their documents ``lanes [n]``; keep the last ``window`` of each scope."""
        if not (isinstance(keys, torch.Tensor) and keys.ndim == 2 and keys.is_floating_point()):
            raise CacheError(f"cache keys must be a 2-D float tensor [n, model_dim], got "
                             f"{tuple(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__}")
        for name, t in (("labels", labels), ("lanes", lanes)):
            if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] != keys.shape[0]:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise CacheError(f"cache {name} must be a 1-D tensor with one entry per key ({keys.shape[0]}), "
                                 f"got {got}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.vocab_size):
            raise CacheError(f"cache labels must lie in [0, vocab_size={self.vocab_size}), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        if not bool(torch.isfinite(keys).all()):
            raise CacheError("cache keys hold a non-finite value (inf or NaN); the cache would poison every score")
        some = next(iter(self.keys.values()), None)
        if some is not None and some.shape[1] != keys.shape[1]:
            raise CacheError(f"cache keys have {keys.shape[1]} features but the cache holds {some.shape[1]}")
        scopes = self._scopes(lanes)
        for scope in scopes.unique().tolist():
            mask = scopes == scope
            k, y = keys[mask].detach(), labels[mask].to(torch.int64)
            if scope in self.keys:
                k, y = torch.cat([self.keys[scope], k]), torch.cat([self.labels[scope], y])
            if self.window:
                k, y = k[-self.window:], y[-self.window:]
            self.keys[scope], self.labels[scope] = k, y
