"""Load a (model, SAE) pair by their real names, with a bounded cache.

The SAE comes from ``SAE.from_pretrained(release, sae_id)``; the model from
``HookedTransformer.from_pretrained(name, **sae.cfg.metadata.model_from_pretrained_kwargs)``
so the residual is the one the SAE was trained on (res-jb needs
``center_writing_weights``). Anything that goes wrong becomes a
:class:`LoadError` whose message a person can act on.

Worked example::

    pairs = PairCache()                     # one per process, shared by sessions
    pair = pairs.get("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    pair.hook_name, pair.sae.cfg.d_sae      # ('blocks.8.hook_resid_pre', 24576)
"""

from __future__ import annotations

import errno
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cachetools import LRUCache

from .catalogue import SaeChoice, load_catalogue
from .residuals import fast_weights_for


class LoadError(Exception):
    """A model or SAE that cannot be loaded; ``str(err)`` is for people."""


@dataclass
class LoadedPair:
    model: Any  # transformer_lens.HookedTransformer
    sae: Any  # sae_lens.SAE
    choice: SaeChoice
    hook_name: str
    device: str
    fast_weights: Any = None  # residuals.FastWeights / architectures.FamilyWeights, when the architecture allows it

    @property
    def neuronpedia_id(self) -> str | None:
        return self.choice.neuronpedia_id


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cgroup_free_bytes(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory left under this container's cgroup limit (a Space's real limit;
    psutil sees the host's), or None where there is no limit."""
    for limit_f, usage_f, stat_f in (("memory.max", "memory.current", "memory.stat"),
                                     ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                                      "memory/memory.stat")):
        try:
            limit = (root / limit_f).read_text().strip()
            usage = int((root / usage_f).read_text().strip())
        except (OSError, ValueError):
            continue
        if not limit.isdigit() or int(limit) >= 2**60:
            return None
        reclaimable = 0  # the page cache the kernel drops before it runs out
        try:
            for line in (root / stat_f).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key in ("inactive_file", "total_inactive_file"):
                    reclaimable = int(value)
        except (OSError, ValueError):
            pass
        return max(0, int(limit) - usage + reclaimable)
    return None


def _available_memory_bytes() -> int | None:
    """Free memory: the smaller of the host's and the container's (cgroup) budget."""
    free = []
    try:
        import psutil

        free.append(int(psutil.virtual_memory().available))
    except Exception:
        pass
    cgroup = _cgroup_free_bytes()
    if cgroup is not None:
        free.append(cgroup)
    return min(free) if free else None


# Parameter counts of models whose names do not say them; the rest are read from
# the name ("gemma-2-27b", "Llama-3.1-8B", "pythia-70m-deduped", "qwen3-0.6b").
_KNOWN_PARAMS = {
    "gpt2-small": 124_000_000, "gpt2": 124_000_000,
    # Names that round: Gemma 2 "2b" is 2.6 B parameters (a 256k-token embedding).
    "pythia-70m-deduped": 70_426_624,
    "gemma-2-2b": 2_614_341_888, "gemma-2-9b": 9_241_705_984, "gemma-2-27b": 27_227_128_320,
    "google/gemma-3-270m": 268_098_176, "google/gemma-3-270m-it": 268_098_176,
}
_SIZE_IN_NAME = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)


def model_parameters(name: str) -> int | None:
    """The model's parameter count as its name gives it, or None if unknown."""
    if name in _KNOWN_PARAMS:
        return _KNOWN_PARAMS[name]
    sizes = [float(n) * (1e9 if unit.lower() == "b" else 1e6)
             for n, unit in _SIZE_IN_NAME.findall(name.rsplit("/", 1)[-1])]
    return int(max(sizes)) if sizes else None


def _explain(what: str, err: BaseException) -> LoadError:
    """Turn a loader's exception into one message a person can act on."""
    name = type(err).__name__
    text = str(err).splitlines()[0][:300] if str(err) else name
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or (
        "offline" in text.lower() and "cache" in text.lower()
    ):
        why = "it is not in the local Hugging Face cache and the Hub cannot be reached"
        if offline:
            why += " (offline mode: HF_HUB_OFFLINE=1)"
        return LoadError(f"Could not download {what}: {why}.")
    if name in ("ConnectError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "TimeoutError"):
        return LoadError(f"Could not download {what}: the Hugging Face Hub is unreachable ({text}).")
    if name in _INTERRUPTED or "consistency check failed" in text.lower():
        return LoadError(f"Could not download {what}: the download was interrupted ({text}). "
                         "Try again: the files already downloaded are kept.")
    code = getattr(err, "errno", None) if isinstance(err, OSError) else None
    if code in (errno.ENOSPC, errno.EDQUOT):
        return LoadError(f"Could not download {what}: the disk is full ({text}).")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "the Hugging Face cache"
        return LoadError(f"Could not download {what}: cannot write to {cache} ({text}).")
    if name in ("RepositoryNotFoundError", "EntryNotFoundError", "RevisionNotFoundError"):
        return LoadError(f"Could not find {what} on the Hugging Face Hub ({text}).")
    if isinstance(err, MemoryError) or "out of memory" in text.lower():
        return LoadError(f"{what} does not fit in this machine's memory.")
    return LoadError(f"Could not load {what}: {name}: {text}")


_INTERRUPTED = ("RemoteProtocolError", "ReadError", "ChunkedEncodingError", "IncompleteRead",
                "ProtocolError", "ContentTooShortError", "ConnectionResetError", "ConnectionAbortedError",
                "RemoteDisconnected", "BrokenPipeError")


_HEADERS_PATCHED = False


def _read_cached_safetensors_headers() -> None:
    """Let SAELens's ``gemma_3`` conversion (Gemma Scope 2) load from the local cache.

    To learn an SAE's shape it reads the safetensors header over HTTP range
    requests (``get_safetensors_tensor_shapes``), bypassing the Hub cache and
    ``HF_HUB_OFFLINE``: offline, a fully cached Gemma Scope 2 SAE fails to load.
    Wrap it so a header already in the cache is read from disk (the same bytes),
    and only a file not yet downloaded goes to the network as before.
    """
    global _HEADERS_PATCHED
    if _HEADERS_PATCHED:
        return
    import json
    import struct

    from huggingface_hub import try_to_load_from_cache
    from sae_lens.loading import pretrained_sae_loaders as loaders

    original = loaders.get_safetensors_tensor_shapes

    def shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        path = try_to_load_from_cache(repo_id, filename)
        if not isinstance(path, str):
            return original(repo_id, filename)
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}

    loaders.get_safetensors_tensor_shapes = shapes
    _HEADERS_PATCHED = True


class PairCache:
    """Loaded models and SAEs, bounded (LRU) so switching back is instant and
    memory stays bounded. One per process; thread-safe."""

    def __init__(self, max_models: int = 1, max_saes: int = 3, device: str | None = None):
        self.device = device or default_device()
        self._models: LRUCache = LRUCache(maxsize=max_models)
        self._saes: LRUCache = LRUCache(maxsize=max_saes)
        self._lock = threading.RLock()

    def get(
        self,
        release: str,
        sae_id: str,
        progress: Callable[[float, str], None] | None = None,
    ) -> LoadedPair:
        """Load (or reuse) the SAE ``sae_id`` of ``release`` and its model."""
        report = progress or (lambda frac, msg: None)
        try:
            choice = load_catalogue().choice(release, sae_id)
        except KeyError as err:
            raise LoadError(f"Unknown SAE: {err.args[0]}.") from None
        self._check_size(choice)
        with self._lock:
            report(0.1, f"loading SAE {release} / {sae_id}")
            sae = self._saes.get((release, sae_id))
            if sae is None:
                sae = self._load_sae(choice)
                self._saes[(release, sae_id)] = sae
            meta = sae.cfg.metadata
            kwargs = dict(getattr(meta, "model_from_pretrained_kwargs", None) or {})
            model_name = getattr(meta, "model_name", None) or choice.model
            key = (model_name, tuple(sorted(kwargs.items())))
            report(0.5, f"loading model {model_name}")
            entry = self._models.get(key)
            if entry is None:
                self._models.clear()  # free the old model before loading the next
                model = self._load_model(model_name, kwargs)
                entry = (model, fast_weights_for(model))
                self._models[key] = entry
            report(1.0, "ready")
            return LoadedPair(entry[0], sae, choice, meta.hook_name, self.device, entry[1])

    def _check_size(self, choice: SaeChoice) -> None:
        """Refuse, before any download, an SAE or a model that would not fit in memory."""
        with self._lock:
            sae_loaded = (choice.release, choice.sae_id) in self._saes
            model_loaded = any(key[0] == choice.model for key in self._models.keys())
        free = None if sae_loaded and model_loaded else _available_memory_bytes()
        if free is None:
            return
        if not sae_loaded and choice.d_sae and choice.d_in:
            need = choice.d_sae * choice.d_in * 2 * 4  # W_enc + W_dec, fp32
            if need > free // 2:
                raise LoadError(
                    f"SAE {choice.release} / {choice.sae_id} needs about {need / 2**30:.1f} GiB "
                    f"and only {free / 2**30:.1f} GiB is free: choose a smaller SAE."
                )
        params = None if model_loaded else model_parameters(choice.model)
        if params is not None and params * 4 > free // 2:  # fp32 weights; loading briefly holds two copies
            raise LoadError(
                f"model {choice.model} needs about {params * 4 / 2**30:.1f} GiB "
                f"({params / 1e9:.2g}B parameters in float32) and only {free / 2**30:.1f} GiB is free: "
                "choose an SAE of a smaller model."
            )

    def _load_sae(self, choice: SaeChoice):
        from sae_lens import SAE

        _read_cached_safetensors_headers()
        try:
            sae = SAE.from_pretrained(choice.release, choice.sae_id, device=self.device)
        except Exception as err:  # noqa: BLE001 - every loader failure becomes a LoadError
            raise _explain(f"SAE {choice.release} / {choice.sae_id}", err) from err
        return sae.eval()

    def _load_model(self, name: str, kwargs: dict):
        import warnings

        from transformer_lens import HookedTransformer

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # HookedTransformer's deprecation notice
                model = HookedTransformer.from_pretrained(name, device=self.device, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise _explain(f"model {name}", err) from err
        model.eval()
        # An empty tokenizer (no vocab files in the cache) maps every text to one id.
        probe = model.to_tokens("hello world", prepend_bos=False)[0].tolist()
        if model.to_string(probe) != "hello world":
            raise LoadError(f"model {name}: its tokenizer did not load (no vocabulary files found).")
        return model
