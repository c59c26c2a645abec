"""Prompt → tokens → (KV-cached residuals) → features, one :class:`TokenStep` per token.

Worked example::

    pair = load_pair("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    for step in generate(pair, "The capital of France is", GenerationSettings(max_new_tokens=3, seed=0)):
        print(step.position, repr(step.text), [f.index for f in step.features][:3])
    # 1 'The' [...]            <- prompt tokens first (is_prompt=True), one batched pass
    # ...
    # 6 ' Paris' [...]         <- then one KV-cached forward per new token

What a step means: ``features`` are the SAE features of the residual at the
step's own ``position`` (what the model holds while reading this token, so
``sae.encode(cache[hook][0, position])`` reproduces them), and each feature's
``attribution`` is its direct logit attribution to ``next_token_id``, the
token chosen from this position (the next prompt token, or the sampled one).
``prob`` is the probability the model gave this token when it was sampled.
The BOS token is fed to the model but not reported.

Several SAEs, one forward: ``Generation(pair, prompt, settings, extra=[pair_2, pair_5])``
(other SAEs of the same model, as :class:`~axon_core.loading.LoadedPair` or
:class:`LayerSae`) reads every SAE's hook point in the same KV-cached forward;
each step's ``features`` then holds the hits of every SAE, the primary's first,
each with its ``layer`` (the block of its hook point; ``None`` in a run of one SAE).

Prompts are tokenized exactly as TransformerLens does: ``<|endoftext|>`` typed
literally becomes GPT-2's special token 50256 (a document boundary, shown as
``<|endoftext|>``), and only a *generated* one ends the run (``stop_at_eos``).
A prompt longer than the context window is refused with its real length, never
truncated. A temperature below ``1e-6`` (or NaN) samples greedily, as 0 does;
a top_p below ``1e-6`` keeps only the most likely token, as ``1e-6`` does.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from .decision import Decision, Fit, candidate_text, candidates, direct_effects, encode_with_fit
from .fast_encode import encode_top
from . import kv_store
from .fork import Fork, ForkError, check_fork, fork_seed, step_before_fork
from .features import FeatureHit, direct_logit_attribution
from .residuals import FastStepper, make_stepper
from .sampling import Choice, sample_next
from .watch import Watch
from .stepping import StepOutput, hook_layer  # noqa: F401  (hook_layer: also this module's API)


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling and feature settings for one run (all plain values, so a run
    can be shared by link and reproduced)."""

    max_new_tokens: int = 40
    temperature: float = 0.8  # 0 → greedy
    top_k: int = 50  # 0 → off
    top_p: float = 0.95  # 1 → off
    repetition_penalty: float = 1.1  # 1 → off
    seed: int = 0
    feature_k: int = 12  # features reported per token
    activation_threshold: float = 0.1
    stop_at_eos: bool = True


@dataclass(frozen=True)
class TokenStep:
    """One token of a run, with the SAE features of its residual."""

    position: int  # index in the model's input, BOS = 0
    token_id: int
    text: str
    is_prompt: bool
    features: tuple[FeatureHit, ...]
    next_token_id: int | None = None  # what the attributions point at
    prob: float | None = None  # model probability (T=1) of this token when sampled
    sampled_prob: float | None = None  # probability under the sampling distribution used
    notice: str | None = None  # e.g. "stopped: context window full"
    display: str | None = None  # what to show: whole characters (see GlyphJoiner); None → text
    # the choice of next_token_id made at this position: candidates, direct-path effects
    # (axon_core.decision); None at prompt positions before the last, and at the run's end
    decision: Decision | None = None
    fit: tuple[Fit, ...] = ()  # how well each SAE reconstructs this token's residual (primary first)
    # the exact activation of each watched feature (the run's watch list, in its order; 0 where it
    # does not fire), whether or not it is among ``features`` (see axon_core.watch)
    watched: tuple[float, ...] = ()

    @property
    def shown(self) -> str:
        """What a person sees of this token: ``display`` where set, else ``text``."""
        return self.text if self.display is None else self.display




@dataclass(frozen=True, eq=False)
class LayerSae:
    """One SAE a run reads, at its hook point: what :class:`Generation` (``extra``)
    and :mod:`axon_core.depth` need of a :class:`~axon_core.loading.LoadedPair`.

    >>> LayerSae.of(pairs.get("gpt2-small-res-jb", "blocks.5.hook_resid_pre")).layer
    5
    """

    sae: Any  # sae_lens.SAE
    hook_name: str
    neuronpedia_id: str | None = None
    release: str | None = None
    sae_id: str | None = None

    @property
    def layer(self) -> int | None:
        return hook_layer(self.hook_name)

    @classmethod
    def of(cls, source: Any) -> "LayerSae":
        """A LayerSae from a LoadedPair (or anything with ``sae`` and ``hook_name``)."""
        if isinstance(source, LayerSae):
            return source
        choice = getattr(source, "choice", None)
        return cls(source.sae, source.hook_name, getattr(source, "neuronpedia_id", None),
                   getattr(choice, "release", None), getattr(choice, "sae_id", None))

    def describe(self) -> dict[str, Any]:
        """Plain values naming this SAE (for an export's meta)."""
        return {"release": self.release, "sae_id": self.sae_id, "hook_name": self.hook_name,
                "layer": self.layer, "neuronpedia_id": self.neuronpedia_id}


MIN_TEMPERATURE = 1e-6  # below this (or NaN) sampling is greedy
MIN_TOP_P = 1e-6  # a smaller top_p (float32 rounds 1e-320 to 0) keeps the top token, as this does

_LOCKS_GUARD = threading.Lock()
_MODEL_LOCKS: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()


def forward_lock(model, stepper):
    """What one forward step must hold. :class:`FastStepper` keeps all its state
    in the stepper, so concurrent runs need nothing; TransformerLens's stepper
    adds hooks to the shared model for the duration of a forward, so concurrent
    runs on one model take turns, one forward at a time."""
    if isinstance(stepper, FastStepper) or getattr(stepper, "shares_model_state", True) is False:
        return contextlib.nullcontext()
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
    return lock


class PromptError(ValueError):
    """A prompt that cannot be run; ``str(err)`` is for people."""


def encode_prompt(model, prompt: str, prepend_bos: bool = True) -> torch.Tensor:
    """The prompt's token ids (with BOS first when the SAE was trained so)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("The prompt is empty: type some text to continue.")
    try:  # truncate=False: a long prompt is refused with its real length, never cut silently
        tokens = model.to_tokens(prompt, prepend_bos=prepend_bos, truncate=False)[0]
    except (TypeError, ValueError, UnicodeError) as err:  # e.g. lone surrogates from a raw API call
        raise PromptError(f"The prompt could not be tokenized ({type(err).__name__}): "
                          "remove unusual characters and try again.") from None
    n_ctx = model.cfg.n_ctx
    if tokens.shape[0] >= n_ctx:
        raise PromptError(
            f"The prompt is {tokens.shape[0]} tokens long; this model reads at most {n_ctx} "
            "including the ones it writes. Shorten the prompt."
        )
    return tokens


def _features(pair, acts: torch.Tensor, settings: GenerationSettings) -> list[list[tuple[int, float]]]:
    # top_features of SAELens's encode for each row; one row by the fastest exact path measured
    # for this SAE (a half-precision screen rescored exactly, or plain float32: fast_encode)
    return encode_top(pair.sae, acts, settings.feature_k, settings.activation_threshold)


def _attribution_setup(pair, sae=None, hook_name: str | None = None):
    """What :func:`direct_logit_attribution` needs, or None when the SAE's
    decoder does not write into the residual stream (e.g. hook_z)."""
    model = pair.model
    sae = pair.sae if sae is None else sae
    hook_name = pair.hook_name if hook_name is None else hook_name
    if sae.W_dec.shape[-1] != model.cfg.d_model or "hook_z" in hook_name:
        return None
    norm = model.cfg.normalization_type or ""
    ln_w = getattr(model.ln_final, "w", None) if norm in ("LN", "RMS") else None
    return {"centre": norm.startswith("LN"), "ln_weight": ln_w}


def _hits(pair, feats, next_id, scale, setup, sae=None, layer: int | None = None,
          tokens: list[int] | None = None) -> tuple[tuple[FeatureHit, ...], list]:
    """The hits of one SAE, with their direct logit attribution to ``next_id``;
    with ``tokens`` (candidates, ``next_id`` among them) also each hit's direct
    effect on each of those tokens' logits (rows of a Decision's ``effects``)."""
    if not feats:
        return (), []
    idx, acts = [i for i, _ in feats], [a for _, a in feats]
    if next_id is None or setup is None:
        none = [None] * len(idx) if tokens and setup is None else []  # no direct path (e.g. hook_z)
        return tuple(FeatureHit(i, a, None, layer) for i, a in feats), none
    w_dec = (pair.sae if sae is None else sae).W_dec
    if tokens:
        effects = direct_effects(idx, acts, w_dec, pair.model.W_U, tokens, float(scale), **setup).tolist()
        attr = [row[tokens.index(next_id)] for row in effects]
    else:
        effects = []
        attr = direct_logit_attribution(idx, acts, w_dec, pair.model.W_U[:, next_id], float(scale), **setup)
    return tuple(FeatureHit(i, a, t, layer) for i, a, t in zip(idx, acts, attr)), effects


class Generation:
    """One run's token loop as a state machine, so that an engine can step many
    runs in turns, or several at once through one batched forward.

    ``start()`` runs the prompt pass and returns the prompt's steps; then, while
    not ``done``, feed ``next_input`` through ``stepper`` (alone, or batched
    with other runs' steppers) and hand the output to ``advance``, which samples
    and returns the new token's :class:`TokenStep`. :func:`generate` is exactly
    that loop for one run. Raises :class:`PromptError` at construction if the
    prompt cannot run.

    ``extra``: more SAEs of the same model (LoadedPairs or :class:`LayerSae`,
    at most one per layer) read in the same forward; ``extra_edits`` optionally
    edits their hook points (``{hook_name: edit}``, e.g. steering at another
    layer). :attr:`saes` lists every SAE read, the primary first. ``watch``:
    (layer, index) keys in :func:`~axon_core.watch.resolve_watch`'s canonical form,
    whose exact activations every step reports in ``watched``.

    Worked example::

        g = Generation(pair, "The capital of France is", GenerationSettings(max_new_tokens=2))
        steps = g.start()                       # 5 prompt steps (BOS not reported)
        while not g.done:
            out = g.stepper.step(torch.tensor([g.next_input], device=pair.device))
            steps.append(g.advance(out))        # 2 new tokens

    ``fork`` (a :class:`~axon_core.fork.Fork`) with ``base`` (the run's own
    steps, at least up to the fork): the run forked there (see :mod:`axon_core.fork`):
    :meth:`start` runs the prefix and the forced token in one pass and returns
    the run's steps up to the fork followed by the forced token's; sampling
    afterwards uses its own stream (:func:`~axon_core.fork.fork_seed`). With
    ``kv``, the run's keys and values (:meth:`keep_kv`; or a function of the
    prefix's token ids returning them or None, e.g. a
    :class:`~axon_core.kv_store.KVStore`'s ``find``), the prefix is not
    recomputed: :meth:`start` feeds only the forced token (:attr:`kv_reused`;
    :attr:`positions_computed` counts the positions fed through the model).
    Raises :class:`~axon_core.fork.ForkError` for a fork the run cannot take.
    """

    def __init__(self, pair, prompt: str, settings: GenerationSettings, edit=None, stepper=None,
                 extra: Sequence[Any] = (), extra_edits: Mapping[str, Any] | None = None,
                 decisions: bool = True, watch: Sequence[tuple] = (), fork: Fork | None = None,
                 base: Sequence[TokenStep] = (), kv=None):
        self.pair, self.settings = pair, settings
        # each step's Decision (candidates, direct-path effects) and Fit (variance explained);
        # False: features and attributions only (what benchmarks/decision.py compares against)
        self.decisions = bool(decisions)
        model = pair.model
        self.saes: tuple[LayerSae, ...] = (LayerSae.of(pair), *(LayerSae.of(x) for x in extra))
        _check_saes(pair, extra, self.saes)
        self.watch = Watch(self.saes, watch)  # ValueError for keys not of these SAEs
        self.layered = len(self.saes) > 1  # hits carry their layer
        self.prepend_bos = bool(getattr(pair.sae.cfg.metadata, "prepend_bos", True))
        self.tokens = encode_prompt(model, prompt, self.prepend_bos).to(pair.device)
        self.n_prompt, self.n_ctx = self.tokens.shape[0], model.cfg.n_ctx
        self.fork, self.base = Fork.of(fork), ()
        asked = settings.max_new_tokens
        if self.fork is not None:
            self.base, asked = self._fork_prefix(base), asked - (self.fork.position + 1 - self.n_prompt)
        n = self.tokens.shape[0]
        self.budget = max(0, min(asked, self.n_ctx - n))
        self.cut_short = self.budget < asked
        self.eos = getattr(model.tokenizer, "eos_token_id", None)
        self.stepper = stepper or make_stepper(model, pair.hook_name, edit, pair.fast_weights,
                                               capacity=n + self.budget,
                                               extra_hooks=[s.hook_name for s in self.saes[1:]],
                                               extra_edits=extra_edits)
        unread = {s.hook_name for s in self.saes[1:]} - set(getattr(self.stepper, "extra_hooks", ()))
        if unread:
            raise ValueError(f"the stepper does not read the extra SAEs' hooks {sorted(unread)}")
        self.lock = forward_lock(model, self.stepper)
        # positions fed through the stepper so far (a fork with the run's keys and values
        # at hand starts at the fork point: see _reuse_kv)
        self.positions_computed = 0
        self.kv_reused, self._first = False, 0
        if self.fork is not None and kv is not None:
            self._reuse_kv(kv)
        self.rng = torch.Generator().manual_seed(
            int(settings.seed) if self.fork is None else fork_seed(settings.seed, self.fork))
        self.history = self.tokens.tolist()
        self.setup = _attribution_setup(pair)
        self.extra_setups = [_attribution_setup(pair, s.sae, s.hook_name) for s in self.saes[1:]]
        self.glyphs = GlyphJoiner(model.tokenizer)
        # logits / T overflows float32 for a tiny T (1e-320 is a valid link value): sample greedily.
        self.temperature = settings.temperature if settings.temperature >= MIN_TEMPERATURE else 0.0
        self.top_p = settings.top_p if settings.top_p >= MIN_TOP_P else MIN_TOP_P
        self.context_notice = f"stopped: the model's context window of {self.n_ctx} tokens is full"
        self.produced = 0  # new tokens so far
        self.done = False
        self._next: Choice | None = None

    def _fork_prefix(self, base: Sequence[TokenStep]) -> tuple[TokenStep, ...]:
        """For a fork: the model input becomes the run's tokens before the fork plus
        the forced one; returns the run's steps before the fork."""
        q, first = self.fork.position, 1 if self.prepend_bos else 0
        base = tuple(sorted(base, key=lambda s: s.position))
        prompt = self.tokens.tolist()
        check_fork(self.fork, first + len(base), len(prompt), self.settings.max_new_tokens)
        base = tuple(s for s in base if s.position < q)
        ids = prompt[:first] + [int(s.token_id) for s in base]
        if [s.position for s in base] != list(range(first, first + len(base))) or ids[: len(prompt)] != prompt:
            raise ValueError("the fork's base steps are not this prompt's run")
        if not 0 <= self.fork.token_id < self.pair.model.cfg.d_vocab:
            raise ForkError(f"token {self.fork.token_id} is not in this model's vocabulary")
        self.tokens = torch.tensor(ids + [self.fork.token_id], dtype=self.tokens.dtype, device=self.tokens.device)
        return base

    def _reuse_kv(self, kv) -> None:
        """A fork whose base run's keys and values are at hand (``kv``: a
        :class:`~axon_core.kv_store.KeptKV`, or ``ids -> KeptKV | None``): the
        positions before the fork are copied into this run's fresh stepper, so
        :meth:`start` feeds only the forced token. Without them (or with a stepper
        that cannot take them) :meth:`start` recomputes the prefix in one pass."""
        q = self.fork.position
        ids = self.tokens.tolist()[:q]
        kept = kv(ids) if callable(kv) else kv
        if kept is not None and kept.covers(ids) and kv_store.resume(self.stepper, kept, q):
            self.kv_reused, self._first = True, q

    def keep_kv(self, owner: tuple = ()):
        """A copy of this run's keys and values (every position fed so far), to fork it
        later (:mod:`axon_core.kv_store`); None where the stepper's cache cannot be copied."""
        return kv_store.snapshot(self.stepper, owner, self.history)

    def _choose(self, logits) -> Choice:
        s = self.settings
        return sample_next(logits, self.history, self.temperature, s.top_k, self.top_p,
                           s.repetition_penalty, self.rng)

    def _text(self, tok: int) -> str:
        return self.pair.model.tokenizer.decode([tok])

    def features(self, acts: torch.Tensor) -> list[list[tuple[int, float]]]:
        """Top features of each row of hook activations (``sae.encode``, top-k, threshold)."""
        return _features(self.pair, acts, self.settings)

    def encode(self, acts: torch.Tensor, sae: LayerSae | None = None) -> tuple[list, list[Fit] | None]:
        """Top features of each row of ``acts`` for ``sae`` (the primary by default)
        and, when this run reports decisions, each row's :class:`Fit`."""
        s = sae or self.saes[0]
        if not self.decisions:
            return _features(s, acts, self.settings), None
        return encode_with_fit(s.sae, acts, self.settings.feature_k, self.settings.activation_threshold,
                               s.layer if self.layered else None)

    def extra_features(self, out) -> list[list[list[tuple[int, float]]]]:
        """Top features of each extra SAE (in :attr:`saes` order, primary
        excluded) for each row of ``out.extra`` (a StepOutput)."""
        return [_features(s, out.extra[s.hook_name], self.settings) for s in self.saes[1:]]

    def extra_encode(self, out) -> tuple[list, list]:
        """:meth:`encode` of each extra SAE's rows of ``out.extra``: (features, fits) per SAE."""
        done = [self.encode(out.extra[s.hook_name], s) for s in self.saes[1:]]
        return [f for f, _ in done], [fit for _, fit in done]

    def _all_hits(self, feats, extra_feats, p: int, next_id, scale,
                  tokens: list[int] | None = None) -> tuple[tuple[FeatureHit, ...], list]:
        """Hits of every SAE at row ``p``: the primary's first, then each extra's;
        with ``tokens``, also every hit's direct effect on each token (see :func:`_hits`)."""
        hits, effects = _hits(self.pair, feats, next_id, scale, self.setup, None,
                              self.saes[0].layer if self.layered else None, tokens)
        for s, setup, rows in zip(self.saes[1:], self.extra_setups, extra_feats):
            more, more_effects = _hits(self.pair, rows[p], next_id, scale, setup, s.sae, s.layer, tokens)
            hits += more
            effects += more_effects
        return hits, effects

    def _step_parts(self, logits, feats, extra_feats, p: int, next_choice, scale):
        """Hits and, where a token was chosen from ``logits``, the Decision (this
        run's glyph joiner must already hold the step's own token)."""
        next_id = next_choice.token_id if next_choice is not None else None
        if not self.decisions or next_choice is None or logits is None:
            return self._all_hits(feats, extra_feats, p, next_id, scale)[0], None
        cands = candidates(logits, next_id, self._candidate_text, next_choice.probs, next_choice.ids,
                           greedy=self.temperature <= 0)
        tokens = [c.token_id for c in cands]
        hits, effects = self._all_hits(feats, extra_feats, p, next_id, scale, tokens)
        return hits, Decision(cands, next_id, tuple(None if e is None else tuple(e) for e in effects))

    def _candidate_text(self, token_id: int) -> str:
        return candidate_text(self.pair.model.tokenizer.decode, self.glyphs.pending, token_id)

    @torch.inference_mode()
    def start(self) -> list[TokenStep]:
        """The prompt pass (one batched forward); returns the prompt's steps."""
        fed = self.tokens[self._first:]
        with self.lock:
            out = self.stepper.step(fed)
        self.positions_computed += int(fed.shape[0])
        if self.fork is not None:
            return self._start_fork(out)
        feats, fits = self.encode(out.acts)
        extra_feats, extra_fits = self.extra_encode(out)
        watched = self._watched(out)
        self._next = self._choose(out.last_logits) if self.budget else None
        n, history = self.tokens.shape[0], self.history
        steps = []
        for p in range(1 if self.prepend_bos else 0, n):
            next_id = history[p + 1] if p + 1 < n else (self._next.token_id if self._next else None)
            last = p == n - 1 and self._next is None
            display = self.glyphs.push(history[p])
            if p == n - 1:  # the last prompt token's logits chose the first new token
                hits, decision = self._step_parts(out.last_logits, feats[p], extra_feats, p, self._next,
                                                  out.final_scale[p])
            else:
                hits, decision = self._all_hits(feats[p], extra_feats, p, next_id, out.final_scale[p])[0], None
            steps.append(TokenStep(
                position=p, token_id=history[p], text=self._text(history[p]), is_prompt=True,
                features=hits, next_token_id=next_id,
                notice=self.context_notice if last and self.cut_short else None,
                display=display, decision=decision, fit=_row_fits(fits, extra_fits, p), watched=watched[p],
            ))
        self.done = self._next is None
        return steps

    def _start_fork(self, out) -> list[TokenStep]:
        """A fork's first pass (the prefix and the forced token): the run's steps
        before the fork, the one before it now choosing the forced token, and the
        forced token's own step (only its row is encoded)."""
        tok, q = self.fork.token_id, self.fork.position
        last = StepOutput(out.acts[-1:], out.last_logits, out.final_scale[-1:],
                          {h: t[-1:] for h, t in out.extra.items()})
        feats, fits = self.encode(last.acts)
        extra_feats, extra_fits = self.extra_encode(last)
        at_eos = self.settings.stop_at_eos and tok == self.eos
        self._next = self._choose(out.last_logits) if self.budget and not at_eos else None
        for t in self.history[:-1]:
            self.glyphs.push(t)
        display = self.glyphs.push(tok)
        hits, decision = self._step_parts(out.last_logits, feats[0], extra_feats, 0, self._next,
                                          last.final_scale[0])
        before = step_before_fork(self.base[-1], tok)
        cand = before.decision.candidates[before.decision.index_of(tok)] if before.decision else None
        notice = ("stopped at <|endoftext|>" if at_eos else
                  self.context_notice if self._next is None and self.cut_short else None)
        step = TokenStep(position=q, token_id=tok, text=self._text(tok), is_prompt=False, features=hits,
                         next_token_id=self._next.token_id if self._next else None,
                         prob=cand.prob if cand else None, sampled_prob=cand.sampled_prob if cand else None,
                         notice=notice, display=display, decision=decision, fit=_row_fits(fits, extra_fits, 0))
        self.done = self._next is None
        return [*self.base[:-1], before, step]

    @property
    def next_input(self) -> int:
        """The token to feed next (the one sampled last)."""
        return self._next.token_id

    @torch.inference_mode()
    def advance(self, out, feats: list[tuple[int, float]] | None = None,
                extra_feats: list[list[list[tuple[int, float]]]] | None = None,
                fit: Fit | None = None) -> TokenStep:
        """Account for the forward of :attr:`next_input` (``out``, a StepOutput of
        one position); ``feats`` (the primary SAE's) and ``extra_feats`` (as
        :meth:`extra_features` returns them) may be given when computed in a
        batch, with ``fit``, the primary's :class:`Fit` (see :meth:`encode`)."""
        cur, i = self._next, self.produced
        self.history.append(cur.token_id)
        self.positions_computed += 1
        self.produced += 1
        at_eos = self.settings.stop_at_eos and cur.token_id == self.eos
        last = i == self.budget - 1 or at_eos
        nxt = None if last else self._choose(out.last_logits)
        notice = None
        if at_eos:
            notice = "stopped at <|endoftext|>"
        elif last and self.cut_short:
            notice = self.context_notice
        fits = [fit] if fit is not None else None
        if feats is None:
            got, fits = self.encode(out.acts)
            feats = got[0]
        extra_fits = None
        if extra_feats is None:
            extra_feats, extra_fits = self.extra_encode(out)
        elif self.decisions and self.saes[1:]:
            extra_fits = [fits_ for _, fits_ in (self.encode(out.extra[s.hook_name], s) for s in self.saes[1:])]
        self._next, self.done = nxt, last
        display = self.glyphs.push(cur.token_id)
        hits, decision = self._step_parts(out.last_logits, feats, extra_feats, 0, nxt, out.final_scale[0])
        return TokenStep(
            position=self.tokens.shape[0] + i, token_id=cur.token_id, text=self._text(cur.token_id),
            is_prompt=False, features=hits, next_token_id=nxt.token_id if nxt else None,
            prob=cur.prob, sampled_prob=cur.sampled_prob, notice=notice, display=display,
            decision=decision, fit=_row_fits(fits, extra_fits, 0), watched=self._watched(out)[0],
        )

    def _watched(self, out) -> list[tuple[float, ...]]:
        """Each row's watched activations (``()`` each when nothing is watched)."""
        if not self.watch:
            return [()] * int(out.acts.shape[0])
        return self.watch.rows([out.acts, *(out.extra[s.hook_name] for s in self.saes[1:])])

    @torch.inference_mode()
    def step(self) -> TokenStep:
        """One new token through this run's own stepper (unbatched)."""
        with self.lock:
            out = self.stepper.step(torch.tensor([self.next_input], device=self.pair.device))
        return self.advance(out)


def _row_fits(fits, extra_fits, p: int) -> tuple[Fit, ...]:
    """Row ``p``'s Fit of every SAE (primary first); () when the run reports none."""
    if not fits:
        return ()
    return (fits[p], *(f[p] for f in (extra_fits or ()) if f))


def _check_saes(pair, extra: Sequence[Any], saes: tuple[LayerSae, ...]) -> None:
    """Extra SAEs must read the primary's model, at distinct layers."""
    for x in extra:
        model = getattr(x, "model", None)
        if model is not None and model is not pair.model:
            raise ValueError(f"SAE at {x.hook_name} belongs to another model than the run's")
    if len(saes) > 1:
        layers = [s.layer for s in saes]
        if None in layers:
            raise ValueError(f"not a block's hook point: {saes[layers.index(None)].hook_name!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"at most one SAE per layer: {[s.hook_name for s in saes]}")


class GlyphJoiner:
    """Whole characters for display when one character spans several tokens.

    Byte-level BPE splits an emoji or a CJK character into tokens that decode
    alone to "\ufffd". Each token keeps its own span; the glyph is shown once,
    on the token that completes it, and the tokens before it show nothing.

    >>> # ids of "🧠" in GPT-2: two tokens that decode to "\ufffd" each
    >>> j = GlyphJoiner(tokenizer); [j.push(t) for t in tokenizer.encode("🧠")]
    ['', '🧠']
    """

    MAX_PENDING = 8  # a UTF-8 character is at most 4 bytes; give up after this many tokens

    def __init__(self, tokenizer):
        self.tokenizer, self.pending = tokenizer, []

    def push(self, token_id: int) -> str:
        self.pending.append(int(token_id))
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < self.MAX_PENDING:
            return ""  # an incomplete character: wait for the token that completes it
        self.pending = []
        return text


@torch.inference_mode()
def generate(pair, prompt: str, settings: GenerationSettings, edit=None, extra: Sequence[Any] = (),
             extra_edits: Mapping[str, Any] | None = None, watch: Sequence[tuple] = (), fork: Fork | None = None,
             base: Sequence[TokenStep] = (), kv=None) -> Iterator[TokenStep]:
    """Stream the run: the prompt's tokens (one batched pass), then one
    KV-cached forward per new token. See the module docstring for what a step holds.

    ``pair`` is a :class:`~axon_core.loading.LoadedPair`; ``edit`` optionally
    changes the activation at the hook point (steering); ``extra`` and
    ``extra_edits``: more SAEs read in the same forward, and ``watch``, as for :class:`Generation`;
    ``fork`` and ``base``: the run ``base`` forked (see :mod:`axon_core.fork`), ``kv``
    its keys and values where kept (:meth:`Generation.keep_kv`: then only the fork's own positions are computed).
    Raises :class:`PromptError` before yielding anything if the prompt cannot run.
    """
    run = Generation(pair, prompt, settings, edit, extra=extra, extra_edits=extra_edits, watch=watch,
                     fork=fork, base=base, kv=kv)
    yield from run.start()
    while not run.done:
        yield run.step()
