"""The catalogue from SAELens's directory, and loading by real names offline."""

import time

import pytest

from axon_core.catalogue import DEFAULT_MODEL, DEFAULT_RELEASE, DEFAULT_SAE_ID, load_catalogue
from axon_core.loading import LoadError


def test_catalogue_lists_res_jb_with_neuronpedia_ids():
    cat = load_catalogue()
    assert cat.models()[0] == DEFAULT_MODEL
    releases = [r.release for r in cat.releases(DEFAULT_MODEL)]
    assert releases[0] == DEFAULT_RELEASE
    choice = cat.choice(DEFAULT_RELEASE, DEFAULT_SAE_ID)
    assert choice.neuronpedia_id == "gpt2-small/8-res-jb"
    assert choice.d_sae == 24576 and choice.d_in == 768
    # Neuronpedia ids are not always the layer number.
    assert cat.choice(DEFAULT_RELEASE, "blocks.11.hook_resid_post").neuronpedia_id == "gpt2-small/12-res-jb"
    # Only models TransformerLens can load are listed.
    assert all(r.model in cat.models() for r in cat.by_release.values())
    with pytest.raises(KeyError, match="unknown SAE release"):
        cat.choice("no-such-release", DEFAULT_SAE_ID)


def test_catalogue_is_parsed_once_per_process():
    load_catalogue()
    t = time.perf_counter()
    for _ in range(100):
        load_catalogue()
    assert time.perf_counter() - t < 0.05


def test_pair_cache_reuses_loaded_pair(pairs, pair):
    t = time.perf_counter()
    again = pairs.get(DEFAULT_RELEASE, DEFAULT_SAE_ID)
    assert time.perf_counter() - t < 0.5
    assert again.model is pair.model and again.sae is pair.sae
    assert pair.hook_name == DEFAULT_SAE_ID and pair.neuronpedia_id == "gpt2-small/8-res-jb"
    assert pair.fast_weights is not None


def test_unknown_sae_is_a_load_error(pairs):
    with pytest.raises(LoadError, match="Unknown SAE"):
        pairs.get(DEFAULT_RELEASE, "blocks.99.hook_resid_pre")
    with pytest.raises(LoadError, match="Unknown SAE"):
        pairs.get("no-such-release", DEFAULT_SAE_ID)


def test_sae_missing_offline_says_it_could_not_download(pairs):
    # The offline hub holds only blocks.2 and blocks.8 of res-jb.
    with pytest.raises(LoadError, match="Could not download SAE gpt2-small-res-jb / blocks.5") as err:
        pairs.get(DEFAULT_RELEASE, "blocks.5.hook_resid_pre")
    assert "offline" in str(err.value)


def test_too_big_sae_refused_before_download(monkeypatch, pairs):
    import axon_core.loading as loading

    monkeypatch.setattr(loading, "_available_memory_bytes", lambda: 100 * 2**20)
    with pytest.raises(LoadError, match=r"needs about 0\.1 GiB"):
        pairs.get(DEFAULT_RELEASE, "blocks.5.hook_resid_pre")
