"""KV-cached steppers against a plain TransformerLens full forward."""

import pytest
import torch

from axon_core.residuals import FastStepper, FastWeights, TransformerLensStepper, make_stepper

HOOKS = [
    "blocks.8.hook_resid_pre",
    "blocks.3.hook_resid_mid",
    "blocks.11.hook_resid_post",
    "blocks.5.hook_attn_out",
    "blocks.5.hook_mlp_out",
    "blocks.2.attn.hook_z",
]
EOS = 50256


def _run_stepwise(stepper, prompt, continuation):
    out = stepper.step(prompt)
    acts, logits, scales = [out.acts], [out.last_logits], [out.final_scale]
    for tok in continuation:
        out = stepper.step(tok[None])
        acts.append(out.acts)
        logits.append(out.last_logits)
        scales.append(out.final_scale)
    return torch.cat(acts), torch.stack(logits), torch.cat(scales)


@pytest.mark.parametrize("kind", ["fast", "transformer_lens"])
@pytest.mark.parametrize("hook", HOOKS)
def test_kv_cached_steps_equal_full_forward(pair, kind, hook):
    model = pair.model
    prompt = model.to_tokens("The capital of France is")[0]
    # A continuation with <|endoftext|> in it: GPT-2's pad token, which a
    # default attention mask would hide.
    continuation = torch.tensor([11, EOS, 262, 1110, EOS, 13, 632])
    full = torch.cat([prompt, continuation])
    with torch.inference_mode():
        ref_logits, cache = model.run_with_cache(full[None])
    if kind == "fast":
        stepper = FastStepper(FastWeights.from_model(model), hook)
    else:
        stepper = TransformerLensStepper(model, hook)
    acts, logits, scales = _run_stepwise(stepper, prompt, continuation)
    assert acts.shape == cache[hook][0].shape
    assert (acts - cache[hook][0]).abs().max() <= 1e-4
    assert (logits - ref_logits[0, len(prompt) - 1 :]).abs().max() <= 1e-4
    assert (scales - cache["ln_final.hook_scale"][0, :, 0]).abs().max() <= 1e-5


def test_make_stepper_picks_fast_path_for_gpt2(pair):
    assert isinstance(make_stepper(pair.model, pair.hook_name, weights=pair.fast_weights), FastStepper)
    assert isinstance(make_stepper(pair.model, "blocks.1.ln1.hook_normalized"), TransformerLensStepper)


def test_stepper_refuses_to_overflow_context(pair):
    stepper = make_stepper(pair.model, pair.hook_name)
    n_ctx = pair.model.cfg.n_ctx
    stepper.step(torch.zeros(n_ctx - 1, dtype=torch.long))
    stepper.step(torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="context"):
        stepper.step(torch.zeros(1, dtype=torch.long))


def test_edit_at_hook_changes_downstream_and_is_reported(pair):
    """The edit hook (used for steering) adds to the residual the SAE reads."""
    model = pair.model
    tokens = model.to_tokens("Hello there")[0]
    direction = torch.randn(model.cfg.d_model)
    plain = make_stepper(model, pair.hook_name).step(tokens)
    edited = make_stepper(model, pair.hook_name, edit=lambda x: x + 3 * direction).step(tokens)
    assert torch.allclose(edited.acts - plain.acts, (3 * direction).expand_as(plain.acts), atol=1e-4)
    assert (edited.last_logits - plain.last_logits).abs().max() > 1e-3
