"""Per-token cost and exactness of AXON's generator for Pythia, Gemma 3 and Gemma 2.

Writes an offline hub with random weights in the real shapes (a real-size
``pythia-70m-deduped`` with a res-sm SAE, a real-size ``google/gemma-3-270m``
with its Gemma Scope 2 SAE), loads each by its real name through
``PairCache`` (as the app does), and measures, in one process, side by side:

(a) our generator (``axon_core.generation.generate``, the fast KV-cached
    stepper) at 100 new tokens: median ms per generated token over reps;
(b) the AXON-style loop at the same length: every token a full
    ``run_with_hooks`` over the whole sequence, ``sae.encode`` of the last
    position, sample. A step at length L costs one full forward of L tokens
    whatever came before, so it is measured at every 10th length of the
    100-token run (median of 2 steps each) and averaged: the loop's mean
    per-token cost (``--full`` runs the whole loop instead);
(c) the read floor: bytes of weights one token must read (blocks, unembedding,
    SAE encoder) / the ``sum()`` read bandwidth measured in the same process;
(d) exactness: the streamed features of the timed run equal
    ``sae.encode`` of a full ``run_with_cache`` over its tokens, to 1e-4.

Gemma 2 2B (2.6 B parameters: ≈10.5 GB in fp32, and TransformerLens holds two
copies while loading) is checked by its real name only with ``--gemma2-real``
and enough free memory; otherwise on a small ``HookedTransformerConfig`` with
the same flags (RMSNorm before and after each sublayer, GQA, attention and
logit soft caps, local/global layers), and the output says which.

Usage: ``python benchmarks/families.py [--reps 3] [--full] [--hub DIR] [--threads N] [--gemma2-real]``
The last line is machine-readable:
``families: pythia_ms=… pythia_floor_ratio=… pythia_speedup=… gemma3_ms=… gemma3_floor_ratio=… gemma3_speedup=… gemma2_exact=… pythia_exact=… gemma3_exact=…``
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import axon_style_step, host_line  # noqa: E402

PROMPT = "In a quiet village by the sea, an old fisherman told"
N_NEW = 100


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="run the whole 100-token AXON-style loop")
    ap.add_argument("--hub", help="reuse a hub written by a previous run")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (default: torch's choice). On a shared machine 1 is steadier: "
                    "with 2 threads and another busy process, each small op waits at a thread barrier")
    ap.add_argument("--gemma2-real", action="store_true",
                    help="write and load the real-size gemma-2-2b (needs ≈24 GB free)")
    return ap.parse_args()


def read_bandwidth() -> float:
    import torch

    src = torch.ones(64 * 2**20)  # 256 MB
    times = []
    for _ in range(9):
        t = time.perf_counter()
        src.sum()
        times.append(time.perf_counter() - t)
    return src.numel() * src.element_size() / statistics.median(times)


def settings(**kw):
    from axon_core.generation import GenerationSettings

    base = GenerationSettings(max_new_tokens=N_NEW, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                              stop_at_eos=False, seed=0, feature_k=12, activation_threshold=0.1)
    return dataclasses.replace(base, **kw)


def features_exact(pair, steps, prepend_bos: bool, s) -> bool:
    """The streamed features equal sae.encode of a full run_with_cache, to 1e-4
    (features whose activations tie count as equal in either order)."""
    import torch

    from axon_core.features import equal_up_to_ties

    model, sae = pair.model, pair.sae
    bos = [model.tokenizer.bos_token_id] if prepend_bos else []
    tokens = torch.tensor(bos + [st.token_id for st in steps])
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens[None], names_filter=[pair.hook_name])
        encoded = sae.encode(cache[pair.hook_name][0])
    worst, ok = 0.0, True
    for st in steps:
        vals, idx = encoded[st.position].topk(s.feature_k)
        expect = [(int(i), float(v)) for i, v in zip(idx, vals) if v > s.activation_threshold]
        got = [(f.index, f.activation) for f in st.features]
        if not equal_up_to_ties(got, expect, 1e-4):  # equal activations may come in either order
            ok = False
        worst = max([worst] + [abs(a - b) for (_, a), (_, b) in zip(got, expect)])
    print(f"  exactness: {len(steps)} positions, feature sets {'equal' if ok else 'DIFFER'}, "
          f"largest activation difference {worst:.2e}")
    return ok and worst <= 1e-4 and len(steps) > 0


def measure(pair, args, bandwidth: float, label: str) -> dict:
    import torch

    from axon_core.generation import generate

    model, sae = pair.model, pair.sae
    prepend_bos = bool(getattr(sae.cfg.metadata, "prepend_bos", True))
    s = settings()

    def ours() -> tuple[list[float], list]:
        times, steps, t = [], [], time.perf_counter()
        for step in generate(pair, PROMPT, s):
            now = time.perf_counter()
            if not step.is_prompt:
                times.append(now - t)
            steps.append(step)
            t = now
        assert len(times) == N_NEW
        return times, steps

    list(generate(pair, PROMPT, settings(max_new_tokens=5)))  # warm up
    runs = [ours() for _ in range(args.reps)]
    ms = 1e3 * statistics.median(statistics.median(r[0]) for r in runs)
    mean_ms = 1e3 * statistics.median(statistics.mean(r[0]) for r in runs)
    print(f"  ours: median {ms:.1f} ms/token, mean {mean_ms:.1f} ms/token at {N_NEW} new tokens "
          f"({args.reps} reps; stepper {type(pair.fast_weights).__name__})")

    axon_step = axon_style_step(model, sae, pair.hook_name)

    prompt = model.to_tokens(PROMPT, prepend_bos=prepend_bos)[0]
    if args.full:
        tokens, t = prompt, time.perf_counter()
        for _ in range(N_NEW):
            tokens = torch.cat([tokens, torch.tensor([axon_step(tokens)])])
        axon_ms, how = 1e3 * (time.perf_counter() - t) / N_NEW, "full loop"
    else:
        costs = []
        gen = torch.Generator().manual_seed(0)
        for length in range(len(prompt), len(prompt) + N_NEW, 10):
            tokens = torch.randint(0, min(model.cfg.d_vocab, 50000), (length,), generator=gen)
            reps = []
            for _ in range(2):
                t = time.perf_counter()
                axon_step(tokens)
                reps.append(time.perf_counter() - t)
            costs.append(statistics.median(reps))
        axon_ms, how = 1e3 * statistics.mean(costs), "every 10th length, median of 2 steps each"
    print(f"  AXON-style full recompute: mean {axon_ms:.1f} ms/token ({how})")

    per_token = pair.fast_weights.bytes_per_token() + sae.W_enc.numel() * sae.W_enc.element_size()
    floor_ms = 1e3 * per_token / bandwidth
    print(f"  weights read per token {per_token / 1e6:.0f} MB; read floor {floor_ms:.1f} ms/token; "
          f"ours / floor = {ms / floor_ms:.2f}; speedup {axon_ms / mean_ms:.1f}x")
    exact = features_exact(pair, runs[0][1], prepend_bos, s)
    return {"ms": ms, "floor_ratio": ms / floor_ms, "speedup": axon_ms / mean_ms, "exact": int(exact)}


def gemma2_small_exact() -> bool:
    """Gemma 2's flags on a small config: KV-cached features against run_with_cache + encode."""
    import torch
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from axon_core.catalogue import SaeChoice
    from axon_core.generation import generate
    from axon_core.loading import LoadedPair
    from axon_core.residuals import fast_weights_for
    from scripts.offline_hub import calibrated_sae, gemma_tokenizer

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        d_model=256, d_head=64, n_heads=8, n_key_value_heads=4, d_mlp=1024, n_layers=8, n_ctx=512,
        d_vocab=4096, act_fn="gelu_pytorch_tanh", normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=64, window_size=32, use_local_attn=True, attn_types=["local", "global"] * 4,
        attn_scores_soft_cap=50.0, output_logits_soft_cap=30.0, gated_mlp=True, final_rms=True,
        use_normalization_before_and_after=True, original_architecture="Gemma2ForCausalLM",
    )
    from transformers import AutoTokenizer

    tmp = tempfile.mkdtemp(prefix="axon-gemma-tok-")  # TransformerLens reloads a tokenizer from its files
    gemma_tokenizer(4096, n_merges=3000).save_pretrained(tmp)
    model = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(tmp)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.add_(0.3 * torch.randn_like(p))
    hook = "blocks.5.hook_resid_post"
    with torch.inference_mode():
        _, cache = model.run_with_cache(PROMPT * 3)
    w = calibrated_sae(cache[hook][0], 4096, 40, torch.Generator().manual_seed(0),
                       apply_b_dec_to_input=False, jumprelu=True)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=256, d_sae=4096, apply_b_dec_to_input=False))
    sae.load_state_dict(w)
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.prepend_bos = True
    choice = SaeChoice("small-gemma2", hook, "gemma-2-2b (same flags, small)", None, 4096, 256)
    pair = LoadedPair(model, sae.eval(), choice, hook, "cpu", fast_weights_for(model))
    s = settings(max_new_tokens=200)  # past the 32-token window many times over
    steps = list(generate(pair, PROMPT, s))
    return features_exact(pair, steps, True, s)


def main() -> None:
    args = parse_args()
    print(host_line(), flush=True)
    hub = Path(args.hub or tempfile.mkdtemp(prefix="axon-families-hub-"))
    os.environ["HF_HUB_CACHE"] = str(hub)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from scripts.offline_hub import GEMMA3_SAE_REPO, PYTHIA_SAE_REPO, write_gemma3, write_pythia

    t = time.perf_counter()
    if not (hub / ("models--" + PYTHIA_SAE_REPO.replace("/", "--"))).exists():
        write_pythia(hub, "real", layers=(3,))
    if not (hub / ("models--" + GEMMA3_SAE_REPO.replace("/", "--"))).exists():
        write_gemma3(hub)
    (hub / "AXON_OFFLINE_HUB.json").write_text('{"note": "benchmarks/families.py"}')
    print(f"offline hub ready in {time.perf_counter() - t:.0f} s: {hub}")

    import torch

    from axon_core.loading import PairCache, _available_memory_bytes

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads={torch.get_num_threads()} (every figure below, floor included, uses them)")
    bandwidth = read_bandwidth()
    print(f"sum() read bandwidth {bandwidth / 1e9:.1f} GB/s")
    res = {}
    for key, release, sae_id in (("pythia", "pythia-70m-deduped-res-sm", "blocks.3.hook_resid_post"),
                                 ("gemma3", "gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")):
        pairs = PairCache(device="cpu")
        pair = pairs.get(release, sae_id)
        cfg = pair.model.cfg
        print(f"{key}: {cfg.model_name} by its real name (d_model {cfg.d_model}, {cfg.n_layers} layers, "
              f"vocab {cfg.d_vocab}), SAE {release} / {sae_id} ({pair.sae.cfg.d_sae} features)")
        res[key] = measure(pair, args, bandwidth, key)
        del pair, pairs
        gc.collect()

    free = _available_memory_bytes() or 0
    if args.gemma2_real and free > 24 * 2**30:
        from scripts.offline_hub import write_gemma2

        print("gemma2: writing and loading the real-size google/gemma-2-2b by its real name")
        write_gemma2(hub)
        pair = PairCache(device="cpu").get("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
        gemma2_exact = measure(pair, argparse.Namespace(reps=1, full=False), bandwidth, "gemma2")["exact"]
    else:
        why = "not asked (--gemma2-real)" if not args.gemma2_real else f"only {free / 2**30:.1f} GiB free"
        print(f"gemma2: the same-flags small config (RMS before and after, GQA 8/4, soft caps 50/30, "
              f"local window 32 / global), not the real-size gemma-2-2b: {why}")
        gemma2_exact = int(gemma2_small_exact())

    p, g = res["pythia"], res["gemma3"]
    print(
        f"families: pythia_ms={p['ms']:.1f} pythia_floor_ratio={p['floor_ratio']:.2f} "
        f"pythia_speedup={p['speedup']:.1f} gemma3_ms={g['ms']:.1f} gemma3_floor_ratio={g['floor_ratio']:.2f} "
        f"gemma3_speedup={g['speedup']:.1f} gemma2_exact={gemma2_exact} pythia_exact={p['exact']} "
        f"gemma3_exact={g['exact']}"
    )


if __name__ == "__main__":
    main()
