"""The model → SAE release → SAE id choices, from SAELens's pretrained directory.

SAELens ships a large YAML of every pretrained SAE release (≈10 s to parse on
a small CPU). We parse it once per process, keep only releases whose model
TransformerLens can load, and pickle the result in the user cache directory
keyed by the sae-lens version, so later processes start in milliseconds.

Worked example::

    cat = load_catalogue()
    cat.models()[:2]                        # ['gpt2-small', ...]
    [r.release for r in cat.releases("gpt2-small")][:2]
    choice = cat.choice("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    choice.neuronpedia_id                    # 'gpt2-small/8-res-jb'
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

DEFAULT_MODEL = "gpt2-small"
DEFAULT_RELEASE = "gpt2-small-res-jb"
DEFAULT_SAE_ID = "blocks.8.hook_resid_pre"

# d_sae for releases whose ids don't say it (the res-jb family is 32 × 768).
_KNOWN_D_SAE = {"gpt2-small-res-jb": 24576, "pythia-70m-deduped-res-sm": 32768}
_KNOWN_D_IN = {"gpt2-small": 768, "pythia-70m-deduped": 512, "gemma-2-2b": 2304, "gemma-2-9b": 3584,
               "gemma-2-27b": 4608, "google/gemma-3-270m": 640, "google/gemma-3-270m-it": 640}

# Release kinds the app cannot show as per-token features of one activation,
# hidden from the picker (README, "Model families", says why).
TRANSCODER_REASON = (
    "transcoder: reads the MLP's input and predicts its output, so its features are not a "
    "decomposition of the activation they are read from, and steering by its decoder would "
    "write to another point than it reads"
)
TEMPORAL_REASON = (
    "temporal SAE: encodes each token together with the earlier tokens' activations, "
    "not one position at a time"
)
_HIDDEN_CONVERSIONS = {
    "gemma_2_transcoder": TRANSCODER_REASON,
    "mwhanna_transcoder": TRANSCODER_REASON,
    "mntss_clt_layer_transcoder": "cross-layer " + TRANSCODER_REASON,
    "temporal": TEMPORAL_REASON,
}


def unsupported_reason(release: str, conversion_func: str | None, paths: list[str]) -> str | None:
    """Why the app hides ``release`` (one line), or None if it can show it."""
    if conversion_func in _HIDDEN_CONVERSIONS:
        return _HIDDEN_CONVERSIONS[conversion_func]
    text = " ".join([release, *paths]).lower()
    if re.search(r"(?<![a-z])clt(?![a-z])", text):
        return "cross-layer " + TRANSCODER_REASON
    if "transcoder" in text:
        return TRANSCODER_REASON
    return None


@dataclass(frozen=True)
class SaeChoice:
    """One SAE of a release: what the picker shows and what loading needs."""

    release: str
    sae_id: str
    model: str
    neuronpedia_id: str | None
    d_sae: int | None
    d_in: int | None
    l0: float | None = None

    @property
    def label(self) -> str:
        extra = f" · {self.d_sae:,} features" if self.d_sae else ""
        return f"{self.sae_id}{extra}"


@dataclass(frozen=True)
class Release:
    release: str
    model: str
    repo_id: str
    saes: tuple[SaeChoice, ...]

    def sae_ids(self) -> list[str]:
        return [s.sae_id for s in self.saes]

    def by_layer(self, like: str) -> dict[int, str]:
        """The release's SAEs like ``like`` at each layer, ``{layer: sae_id}``:
        the id with only its layer number changed where the release has it,
        else the id at that layer that shares the longest beginning with it.

        >>> rel.by_layer("blocks.8.hook_resid_pre")      # gpt2-small-res-jb
        {0: 'blocks.0.hook_resid_pre', 1: 'blocks.1.hook_resid_pre', ..., 11: 'blocks.11.hook_resid_pre'}
        """
        m = _LAYER.search(like)
        if m is None:
            return {}
        found: dict[int, str] = {}
        for sae_id in self.sae_ids():
            layer = layer_of(sae_id)
            if layer is None:
                continue
            wanted = like[: m.start(1)] + str(layer) + like[m.end(1):]
            best = found.get(layer)
            if best == wanted:
                continue
            if sae_id == wanted or best is None or _shared(sae_id, wanted) > _shared(best, wanted):
                found[layer] = sae_id
        return dict(sorted(found.items()))


_LAYER = re.compile(r"(?:blocks\.|layer_|layers\.|layer)(\d+)")


def layer_of(sae_id: str) -> int | None:
    """The block an SAE id names (``blocks.8.…`` → 8, ``layer_12/…`` → 12), or None."""
    m = _LAYER.search(sae_id)
    return int(m.group(1)) if m else None


def _shared(a: str, b: str) -> int:
    """Length of the common beginning of two strings."""
    return len(os.path.commonprefix((a, b)))


@dataclass(frozen=True)
class Catalogue:
    """Every loadable release, keyed by name; parsed once, then read-only.

    ``hidden`` maps each release of a loadable model that the picker does not
    offer to the one-line reason (transcoders, temporal SAEs).
    """

    by_release: dict[str, Release]
    hidden: dict[str, str] = field(default_factory=dict)

    def models(self) -> list[str]:
        names = sorted({r.model for r in self.by_release.values()})
        # The default first: it is what the app opens with.
        return sorted(names, key=lambda m: (m != DEFAULT_MODEL, m))

    def releases(self, model: str) -> list[Release]:
        return sorted(
            (r for r in self.by_release.values() if r.model == model),
            key=lambda r: (r.release != DEFAULT_RELEASE, r.release),
        )

    def choice(self, release: str, sae_id: str) -> SaeChoice:
        """The SAE ``sae_id`` of ``release``; ``KeyError`` with a readable message if absent."""
        rel = self.by_release.get(release)
        if rel is None:
            raise KeyError(f"unknown SAE release {release!r}")
        for sae in rel.saes:
            if sae.sae_id == sae_id:
                return sae
        raise KeyError(f"release {release!r} has no SAE {sae_id!r}")


def _parse_width(text: str, model: str = "") -> int | None:
    """'layer_12/width_16k/average_l0_82' → 16384; 'layer_12_width_16k_l0_medium' → 16384;
    '...-65k' → 65536. A model size in the text ('gemma-scope-2-270m-pt-res') is not a width."""
    m = re.search(r"width_(\d+)([km])(?![a-z0-9])", text)
    if not m:
        for size in re.findall(r"(?<![a-z0-9])\d+(?:\.\d+)?[bm](?![a-z0-9])", model.lower()):
            text = text.lower().replace(size, "")
        m = re.search(r"(?:_|-)(\d+)([km])(?![a-z0-9])", text)
    if not m:
        return None
    return int(m.group(1)) * (1024 if m.group(2) == "k" else 1024 * 1024)


def _loadable_by_transformer_lens(model: str) -> bool:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(model)
        return True
    except ValueError:
        return False


def parse_directory() -> Catalogue:
    """Parse SAELens's directory into a :class:`Catalogue` (slow: ≈10 s)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    loadable: dict[str, bool] = {}
    out: dict[str, Release] = {}
    hidden: dict[str, str] = {}
    for name, lookup in directory.items():
        if lookup.model not in loadable:
            loadable[lookup.model] = _loadable_by_transformer_lens(lookup.model)
        if not loadable[lookup.model]:
            continue
        why = unsupported_reason(name, lookup.conversion_func, list(lookup.saes_map.values()))
        if why is not None:
            hidden[name] = why
            continue
        saes = tuple(
            SaeChoice(
                release=name,
                sae_id=sae_id,
                model=lookup.model,
                neuronpedia_id=lookup.neuronpedia_id.get(sae_id),
                d_sae=(_KNOWN_D_SAE.get(name) or _parse_width(sae_id, lookup.model) or _parse_width(path, lookup.model)
                       or _parse_width(name, lookup.model)),
                d_in=_KNOWN_D_IN.get(lookup.model),
                l0=lookup.expected_l0.get(sae_id),
            )
            for sae_id, path in lookup.saes_map.items()
        )
        out[name] = Release(name, lookup.model, lookup.repo_id, saes)
    return Catalogue(out, hidden)


_FORMAT = 3  # bump when Catalogue's fields change, so an older pickle is parsed again


def _cache_file() -> Path:
    from .paths import cache_dir

    version = metadata.version("sae-lens")
    return cache_dir() / f"catalogue-v{_FORMAT}-sae_lens-{version}.pickle"


@functools.cache
def load_catalogue() -> Catalogue:
    """The catalogue, parsed at most once per process and once per sae-lens
    version on this machine (pickled in the user cache directory)."""
    path = _cache_file()
    try:
        with open(path, "rb") as f:
            cat = pickle.load(f)
        if isinstance(cat, Catalogue):
            return cat
    except Exception:  # missing, truncated or from another version: parse again
        pass
    cat = parse_directory()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(cat, f)
        os.replace(tmp, path)  # atomic: a concurrent reader sees old or new, never half
    except OSError:
        pass  # an unwritable cache only costs the next process 10 s
    return cat
