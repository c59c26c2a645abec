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
from typing import Iterator

import torch

from .features import FeatureHit, direct_logit_attribution, top_features
from .residuals import FastStepper, make_stepper
from .sampling import Choice, sample_next


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


MIN_TEMPERATURE = 1e-6  # below this (or NaN) sampling is greedy
MIN_TOP_P = 1e-6  # a smaller top_p (float32 rounds 1e-320 to 0) keeps the top token, as this does

_LOCKS_GUARD = threading.Lock()
_MODEL_LOCKS: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()


def _forward_lock(model, stepper):
    """What one forward step must hold. :class:`FastStepper` keeps all its state
    in the stepper, so concurrent runs need nothing; TransformerLens's stepper
    adds hooks to the shared model for the duration of a forward, so concurrent
    runs on one model take turns, one forward at a time."""
    if isinstance(stepper, FastStepper):
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
    encoded = pair.sae.encode(acts)  # [n, d_sae]: exactly SAELens's encoder
    return [top_features(row, settings.feature_k, settings.activation_threshold) for row in encoded]


def _attribution_setup(pair):
    """What :func:`direct_logit_attribution` needs, or None when the SAE's
    decoder does not write into the residual stream (e.g. hook_z)."""
    model, sae = pair.model, pair.sae
    if sae.W_dec.shape[-1] != model.cfg.d_model or "hook_z" in pair.hook_name:
        return None
    norm = model.cfg.normalization_type or ""
    ln_w = getattr(model.ln_final, "w", None) if norm in ("LN", "RMS") else None
    return {"centre": norm.startswith("LN"), "ln_weight": ln_w}


def _hits(pair, feats, next_id, scale, setup) -> tuple[FeatureHit, ...]:
    if not feats:
        return ()
    idx, acts = [i for i, _ in feats], [a for _, a in feats]
    if next_id is None or setup is None:
        return tuple(FeatureHit(i, a) for i, a in feats)
    attr = direct_logit_attribution(
        idx, acts, pair.sae.W_dec, pair.model.W_U[:, next_id], float(scale), **setup
    )
    return tuple(FeatureHit(i, a, t) for i, a, t in zip(idx, acts, attr))


@torch.inference_mode()
def generate(pair, prompt: str, settings: GenerationSettings, edit=None) -> Iterator[TokenStep]:
    """Stream the run: the prompt's tokens (one batched pass), then one
    KV-cached forward per new token. See the module docstring for what a step holds.

    ``pair`` is a :class:`~axon_core.loading.LoadedPair`; ``edit`` optionally
    changes the activation at the hook point (steering). Raises
    :class:`PromptError` before yielding anything if the prompt cannot run.
    """
    model = pair.model
    prepend_bos = bool(getattr(pair.sae.cfg.metadata, "prepend_bos", True))
    tokens = encode_prompt(model, prompt, prepend_bos).to(pair.device)
    n, n_ctx = tokens.shape[0], model.cfg.n_ctx
    budget = max(0, min(settings.max_new_tokens, n_ctx - n))
    cut_short = budget < settings.max_new_tokens
    eos = getattr(model.tokenizer, "eos_token_id", None)
    stepper = make_stepper(model, pair.hook_name, edit, pair.fast_weights)
    lock = _forward_lock(model, stepper)
    rng = torch.Generator().manual_seed(int(settings.seed))
    history = tokens.tolist()
    setup = _attribution_setup(pair)

    # logits / T overflows float32 for a tiny T (1e-320 is a valid link value): sample greedily.
    temperature = settings.temperature if settings.temperature >= MIN_TEMPERATURE else 0.0
    top_p = settings.top_p if settings.top_p >= MIN_TOP_P else MIN_TOP_P

    def choose(logits) -> Choice:
        return sample_next(
            logits, history, temperature, settings.top_k, top_p,
            settings.repetition_penalty, rng,
        )

    def text(tok: int) -> str:
        return model.tokenizer.decode([tok])

    context_notice = f"stopped: the model's context window of {n_ctx} tokens is full"
    with lock:
        out = stepper.step(tokens)
    feats = _features(pair, out.acts, settings)
    nxt = choose(out.last_logits) if budget else None
    first = 1 if prepend_bos else 0
    for p in range(first, n):
        next_id = history[p + 1] if p + 1 < n else (nxt.token_id if nxt else None)
        last = p == n - 1 and nxt is None
        yield TokenStep(
            position=p, token_id=history[p], text=text(history[p]), is_prompt=True,
            features=_hits(pair, feats[p], next_id, out.final_scale[p], setup),
            next_token_id=next_id, notice=context_notice if last and cut_short else None,
        )
    for i in range(budget):
        cur = nxt
        history.append(cur.token_id)
        with lock:
            out = stepper.step(torch.tensor([cur.token_id], device=pair.device))
        at_eos = settings.stop_at_eos and cur.token_id == eos
        last = i == budget - 1 or at_eos
        nxt = None if last else choose(out.last_logits)
        notice = None
        if at_eos:
            notice = "stopped at <|endoftext|>"
        elif last and cut_short:
            notice = context_notice
        yield TokenStep(
            position=n + i, token_id=cur.token_id, text=text(cur.token_id), is_prompt=False,
            features=_hits(pair, _features(pair, out.acts, settings)[0],
                           nxt.token_id if nxt else None, out.final_scale[0], setup),
            next_token_id=nxt.token_id if nxt else None,
            prob=cur.prob, sampled_prob=cur.sampled_prob, notice=notice,
        )
        if last:
            return
