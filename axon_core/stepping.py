"""What every stepper shares: the step's output, the edit type and the hook points a step can read.

A *stepper* (:class:`~axon_core.residuals.FastStepper` for GPT-2,
:class:`~axon_core.architectures.FamilyStepper` for Pythia and Gemma,
:class:`~axon_core.residuals.TransformerLensStepper` for anything else) holds
one sequence's KV cache; ``step(tokens)`` feeds the new tokens and returns a
:class:`StepOutput`. This module is the one both stepper modules import, so
neither imports the other's internals back (``residuals`` → ``architectures``
→ ``stepping``, one direction).

Worked example::

    out = stepper.step(tokens)          # a StepOutput
    out.acts.shape                      # [n_new, 768]: the hook point's activation
    out.last_logits.argmax()            # the greedy next token
    out.final_scale                     # [n_new]: final LayerNorm scale (for attribution)
    HOOK.match("blocks.8.hook_resid_pre").groups()   # ('8', 'hook_resid_pre')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

Edit = Callable[[torch.Tensor], torch.Tensor]  # acts at the hook point → new acts (steering)

# The hook points a one-token stepper reads: (layer, site).
HOOK = re.compile(
    r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|attn\.hook_z)$"
)


_LAYER = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(hook_name: str) -> int | None:
    """The block a hook point belongs to (``blocks.8.hook_resid_pre`` → 8), or None."""
    m = _LAYER.match(hook_name or "")
    return int(m.group(1)) if m else None


@dataclass
class StepOutput:
    acts: torch.Tensor  # [n_new, *hook_shape]: activation at the hook point
    last_logits: torch.Tensor  # [d_vocab]: logits at the last new position
    final_scale: torch.Tensor  # [n_new]: final LayerNorm scale (ones if the model has none)
    # {hook_name: [n_new, *hook_shape]}: the stepper's ``extra_hooks``, read in the same forward
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
