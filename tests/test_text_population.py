"""engine/population/datasets/text.py and shakespeare.py: next-token populations."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError
from engine.population import ClientData, ShakespearePopulation, ZipfTextPopulation
from engine.population.datasets.shakespeare import OOV, VOCAB_SIZE, VOCABULARY, decode, encode
from engine.population.datasets.text import zipf_cdf


def _zipf(**kwargs) -> ZipfTextPopulation:
    args = {"num_clients": 50, "seed": 3, "vocab_size": 300, "seq_len": 7, "topic_vocab": 40}
    return ZipfTextPopulation(**{**args, **kwargs})


def _check_lm_data(data: ClientData, seq_len: int, vocab: int) -> None:
    assert data.x.dtype == np.int64 and data.y.dtype == np.int64
    assert data.x.shape == data.y.shape == (len(data), seq_len)
    assert data.x.flags.c_contiguous and data.y.flags.c_contiguous
    np.testing.assert_array_equal(data.x[:, 1:], data.y[:, :-1])
    assert data.x.min() >= 0 and data.y.max() < vocab


# -- ZipfTextPopulation ------------------------------------------------------------------------


def test_zipf_text_contract():
    pop = _zipf()
    assert (pop.num_features, pop.num_classes) == (7, 300)
    counts = pop.num_examples(np.arange(50))
    assert counts.dtype == np.int64 and np.all(counts >= 1)
    for client in (0, 17, 49, *pop.held_out_ids(3).tolist()):
        data = pop.client_data(client)
        assert len(data) == pop.num_examples(np.array([client]))[0]
        _check_lm_data(data, 7, 300)
        again = _zipf().client_data(client)
        np.testing.assert_array_equal(data.x, again.x)
        np.testing.assert_array_equal(data.y, again.y)
    np.testing.assert_array_equal(pop.held_out_ids(3), [50, 51, 52])
    assert pop.registry().num_clients == 50


def test_zipf_text_data_is_a_function_of_seed_and_id_only():
    a = _zipf(num_clients=10).client_data(4)
    busy = _zipf(num_clients=10_000)
    busy.client_data(3)
    b = busy.client_data(4)
    np.testing.assert_array_equal(a.x, b.x)
    c = _zipf(seed=4).client_data(4)
    assert c.x.shape != a.x.shape or not np.array_equal(a.x, c.x)
    assert not np.array_equal(_zipf().client_data(5).x[:1], a.x[:1])


def test_without_topics_or_bigrams_tokens_follow_the_global_zipf_law():
    pop = _zipf(vocab_size=50, topic_strength=0.0, bigram_strength=0.0, median_sequences=200)
    tokens = np.concatenate([pop.client_data(c).x.ravel() for c in range(20)])
    expected = np.diff(zipf_cdf(50, 1.1), prepend=0.0)
    observed = np.bincount(tokens, minlength=50) / len(tokens)
    np.testing.assert_allclose(observed[:5], expected[:5], atol=0.01)
    assert observed[0] > 3 * observed[5] > 0


def test_full_bigram_strength_makes_the_next_token_a_function_of_the_previous():
    pop = _zipf(num_topics=1, max_topics_per_client=1, topic_strength=1.0, bigram_strength=1.0)
    data = pop.client_data(2)
    np.testing.assert_array_equal(data.y, pop.successor(np.zeros_like(data.x), data.x))
    # With no bigrams, a topic-only client uses only the tokens of its topics.
    pop = _zipf(topic_strength=1.0, bigram_strength=0.0, max_topics_per_client=2)
    data = pop.client_data(1)
    assert len(np.unique(data.x)) <= 2 * pop.topic_vocab


def test_bigrams_are_learnable_beyond_unigram_frequency():
    # The successor of the previous token is far more likely than its unigram frequency.
    pop = _zipf(num_topics=2, bigram_strength=0.5, median_sequences=100)
    data = pop.client_data(0)
    hits = [
        np.mean(data.y == pop.successor(np.full_like(data.x, topic), data.x)) for topic in (0, 1)
    ]
    assert max(hits) > 0.25


def test_client_data_is_fast_at_a_large_vocabulary():
    pop = ZipfTextPopulation(vocab_size=100_000)
    pop.client_data(0)  # builds the cached distributions
    start = time.perf_counter()
    sequences = sum(len(pop.client_data(c)) for c in range(1, 201))
    per_sequence = (time.perf_counter() - start) / sequences
    assert per_sequence < 1e-3


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_clients", 0),
        ("seed", -1),
        ("vocab_size", 1),
        ("seq_len", 0),
        ("zipf_exponent", -0.1),
        ("num_topics", 0),
        ("topic_vocab", 301),
        ("max_topics_per_client", 0),
        ("topic_strength", 1.5),
        ("bigram_strength", -0.1),
        ("median_sequences", 0.0),
        ("sigma_sequences", -1.0),
        ("min_sequences", 0),
        ("max_sequences", 0),
    ],
)
def test_zipf_text_validation(key, value):
    with pytest.raises(ConfigError) as info:
        _zipf(**{key: value})
    assert info.value.key == key


# -- Shakespeare -------------------------------------------------------------------------------


def _write(path: Path, users: dict[str, tuple[list[str], list[str]]]) -> str:
    doc = {
        "users": list(users),
        "num_samples": [len(x) for x, _ in users.values()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }
    path.write_text(json.dumps(doc))
    return str(path)


_USERS = {
    "ROMEO": (["But soft", "ut soft,"], [",", " "]),
    "JULIET": (["O Romeo!", " Romeo!\n", "Romeo!\nW"], [" ", "W", "h"]),
    "NOBODY": ([], []),
    "CAFE": (["café, sé"], ["!"]),
}


def test_vocabulary_and_encoding():
    assert VOCAB_SIZE == 97 and len(VOCABULARY) == 96 and OOV == 0
    ids = encode("Hi\n~é")
    assert ids.dtype == np.int64
    assert ids.tolist() == [VOCABULARY.index(c) + 1 for c in "Hi\n~"] + [OOV]
    assert decode(encode("To be, or not")) == "To be, or not"


def test_shakespeare_clients_are_next_character_pairs(tmp_path):
    pop = ShakespearePopulation(path=_write(tmp_path / "train.json", _USERS), held_out_fraction=0)
    assert (pop.num_clients, pop.num_features, pop.num_classes) == (3, 8, VOCAB_SIZE)
    romeo = pop.client_data(0)
    _check_lm_data(romeo, 8, VOCAB_SIZE)
    assert [decode(row) for row in romeo.x] == ["But soft", "ut soft,"]
    assert [decode(row) for row in romeo.y] == ["ut soft,", "t soft, "]
    juliet = pop.client_data(1)
    assert decode(juliet.y[1]) == "Romeo!\nW"
    cafe = pop.client_data(2)
    assert cafe.x[0, 3] == OOV and decode(cafe.y[0])[-1] == "!"


def test_shakespeare_held_out_users(tmp_path):
    train = _write(tmp_path / "train.json", _USERS)
    test = _write(tmp_path / "test.json", {"ROMEO": (["Wherefor"], ["e"])})
    pop = ShakespearePopulation(path=train, test_path=test)
    held = pop.held_out_ids(5)
    np.testing.assert_array_equal(held, [3])
    assert decode(pop.client_data(3).y[0]) == "herefore"
    split = ShakespearePopulation(path=train, held_out_fraction=0.5, seed=1)
    assert split.num_clients + len(split.held_out_ids(10)) == 3


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ({"A": (["abc", "ab"], ["d", "c"])}, "one length"),
        ({"A": (["abc"], ["de"])}, "one-character"),
        ({"A": ([1, 2], ["a", "b"])}, "list of strings"),
    ],
)
def test_shakespeare_malformed_users(tmp_path, users, message):
    with pytest.raises(ConfigError) as info:
        ShakespearePopulation(path=_write(tmp_path / "bad.json", users))
    assert info.value.key == "path"
    assert message in info.value.reason and "user 'A'" in info.value.reason


def test_shakespeare_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"users": ["A"], "num_samples": [2], "user_data": {"A": {}}}))
    with pytest.raises(ConfigError, match="needs keys 'x' and 'y'"):
        ShakespearePopulation(path=str(bad))
    bad.write_text(
        json.dumps(
            {"users": ["A"], "num_samples": [2], "user_data": {"A": {"x": ["ab"], "y": ["c"]}}}
        )
    )
    with pytest.raises(ConfigError, match="'num_samples' says 2"):
        ShakespearePopulation(path=str(bad))
    with pytest.raises(ConfigError) as info:
        ShakespearePopulation(path=str(tmp_path / "missing.json"))
    assert info.value.key == "path"
    twice = tmp_path / "dir"
    twice.mkdir()
    _write(twice / "a.json", {"A": (["ab"], ["c"])})
    _write(twice / "b.json", {"A": (["cd"], ["e"])})
    with pytest.raises(ConfigError, match="also in"):
        ShakespearePopulation(path=str(twice))
