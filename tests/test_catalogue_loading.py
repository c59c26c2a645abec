"""The catalogue from SAELens's directory, and loading by real names offline.

These tests keep the catalogue in their own cache folder (``AXON_CACHE_DIR``,
empty at first), never the user's: so SAELens's YAML directory is really
parsed here, whatever pickle another run left in ``~/.cache/axon``.
"""

import pickle

import pytest

from axon_core import catalogue
from axon_core.catalogue import DEFAULT_MODEL, DEFAULT_RELEASE, DEFAULT_SAE_ID, load_catalogue
from axon_core.loading import LoadError


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory):
    """An empty cache folder for this module, and no catalogue held in the process."""
    folder = tmp_path_factory.mktemp("axon-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AXON_CACHE_DIR", str(folder))
        load_catalogue.cache_clear()
        yield folder
    load_catalogue.cache_clear()


def counting_parser(monkeypatch) -> list:
    """Count calls of the YAML directory parser (it still runs)."""
    calls, real = [], catalogue.parse_directory
    monkeypatch.setattr(catalogue, "parse_directory", lambda: calls.append(1) or real())
    return calls


@pytest.fixture(scope="module")
def parsed(own_cache):
    """The first load from the empty folder: parsed from SAELens's YAML, then pickled there."""
    assert not list(own_cache.iterdir())
    with pytest.MonkeyPatch.context() as mp:
        calls = counting_parser(mp)
        cat = load_catalogue()
    assert calls == [1], "the catalogue did not come from SAELens's directory"
    return cat


def test_parser_reads_res_jb_from_the_yaml_directory(parsed):
    # What the parser makes of SAELens's directory entry for gpt2-small-res-jb.
    rel = parsed.by_release[DEFAULT_RELEASE]
    assert rel.model == DEFAULT_MODEL and rel.repo_id == "jbloom/GPT2-Small-SAEs-Reformatted"
    assert rel.sae_ids()[:3] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"]
    choice = parsed.choice(DEFAULT_RELEASE, DEFAULT_SAE_ID)
    assert (choice.release, choice.sae_id, choice.model) == (DEFAULT_RELEASE, DEFAULT_SAE_ID, DEFAULT_MODEL)
    assert choice.neuronpedia_id == "gpt2-small/8-res-jb"
    assert parsed.choice(DEFAULT_RELEASE, "blocks.11.hook_resid_post").neuronpedia_id == "gpt2-small/12-res-jb"


def test_catalogue_is_pickled_in_its_cache_folder_and_reused(parsed, own_cache, monkeypatch):
    (pickled,) = own_cache.glob("catalogue-*.pickle")
    with open(pickled, "rb") as f:
        assert pickle.load(f) == parsed
    load_catalogue.cache_clear()  # as a new process would
    calls = counting_parser(monkeypatch)
    assert load_catalogue() == parsed and calls == []


def test_unreadable_pickle_is_parsed_again(parsed, own_cache, monkeypatch):
    (pickled,) = own_cache.glob("catalogue-*.pickle")
    pickled.write_bytes(b"not a pickle")
    load_catalogue.cache_clear()
    calls = counting_parser(monkeypatch)
    assert load_catalogue() == parsed and calls == [1]
    with open(pickled, "rb") as f:
        assert pickle.load(f) == parsed  # and written back whole


def test_catalogue_lists_res_jb_with_neuronpedia_ids(parsed):
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


def test_catalogue_is_parsed_once_per_process(monkeypatch):
    import axon_core.catalogue as catalogue

    first = load_catalogue()
    opened = []
    monkeypatch.setattr(catalogue, "parse_directory", lambda: opened.append("parse"))
    monkeypatch.setattr(catalogue, "_cache_file", lambda: opened.append("pickle"))
    for _ in range(100):
        assert load_catalogue() is first
    assert opened == []  # neither parsed again nor read from its pickle: counted, not timed


def test_pair_cache_reuses_loaded_pair(pairs, pair):
    again = pairs.get(DEFAULT_RELEASE, DEFAULT_SAE_ID)
    assert again.model is pair.model and again.sae is pair.sae
    assert pair.hook_name == DEFAULT_SAE_ID and pair.neuronpedia_id == "gpt2-small/8-res-jb"
    assert pair.fast_weights is not None


def test_unknown_sae_is_a_load_error(pairs):
    with pytest.raises(LoadError, match="Unknown SAE"):
        pairs.get(DEFAULT_RELEASE, "blocks.99.hook_resid_pre")
    with pytest.raises(LoadError, match="Unknown SAE"):
        pairs.get("no-such-release", DEFAULT_SAE_ID)


def test_sae_missing_offline_says_it_could_not_download(pairs):
    # The offline hub holds res-jb at blocks 2, 5, 8 and 11 only.
    with pytest.raises(LoadError, match="Could not download SAE gpt2-small-res-jb / blocks.3") as err:
        pairs.get(DEFAULT_RELEASE, "blocks.3.hook_resid_pre")
    assert "offline" in str(err.value)


def test_too_big_sae_refused_before_download(monkeypatch, pairs):
    import axon_core.loading as loading

    monkeypatch.setattr(loading, "_available_memory_bytes", lambda: 100 * 2**20)
    with pytest.raises(LoadError, match=r"needs about 0\.1 GiB"):
        pairs.get(DEFAULT_RELEASE, "blocks.3.hook_resid_pre")
