"""population/datasets/leaf.py, tff_h5.py, loading.py: file-backed populations on small files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from common.errors import ConfigError
from engine.population import ArrayPopulation, H5Population, LeafPopulation

# user -> (x [n, 2, 2], y [n]); one user without examples.
USERS = {
    f"u{i:02d}": (
        np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2) / 10 + i,
        np.arange(n, dtype=np.int64) % 4,
    )
    for i, n in enumerate([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 0])
}
NONEMPTY = [user for user, (_, y) in USERS.items() if len(y)]


def _leaf_doc(users: list[str]) -> dict:
    return {
        "users": users,
        "num_samples": [len(USERS[u][1]) for u in users],
        "user_data": {u: {"x": USERS[u][0].tolist(), "y": USERS[u][1].tolist()} for u in users},
    }


def _write_json(path: Path, doc: object) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


def _write_h5(path: Path, users: list[str], x_key: str = "pixels", y_key: str = "label") -> str:
    with h5py.File(path, "w") as handle:
        for user in users:
            handle.create_dataset(f"examples/{user}/{x_key}", data=USERS[user][0])
            handle.create_dataset(f"examples/{user}/{y_key}", data=USERS[user][1].astype(np.int32))
    return str(path)


def _all_examples(pop: ArrayPopulation) -> list[tuple[bytes, int]]:
    ids = np.concatenate([np.arange(pop.num_clients), pop.held_out_ids(10**6)])
    rows = []
    for client in ids:
        data = pop.client_data(int(client))
        assert len(data) == pop.num_examples(np.array([client]))[0] >= 1
        assert data.x.dtype == np.float32
        assert data.y.dtype == np.int64
        assert data.x.shape[1] == pop.num_features
        rows += [(x.tobytes(), int(y)) for x, y in zip(data.x, data.y, strict=True)]
    return sorted(rows)


def _expected_examples(users: list[str]) -> list[tuple[bytes, int]]:
    rows = []
    for user in users:
        x, y = USERS[user]
        rows += [(r.reshape(-1).tobytes(), int(v)) for r, v in zip(x, y, strict=True)]
    return sorted(rows)


def _assert_one_line_error(info: pytest.ExceptionInfo, key: str, *fragments: str) -> None:
    assert info.value.key == key
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


# -- LEAF ----------------------------------------------------------------------------------------


def test_leaf_single_file_holds_out_a_seeded_fraction(tmp_path):
    path = _write_json(tmp_path / "all.json", _leaf_doc(list(USERS)))
    pop = LeafPopulation(path=path, seed=3, held_out_fraction=0.2)
    assert pop.num_clients == 8  # 10 users with examples, 2 held out, the empty one dropped
    assert pop.num_features == 4
    assert pop.num_classes == 4
    held = pop.held_out_ids(25)
    np.testing.assert_array_equal(held, [8, 9])
    assert _all_examples(pop) == _expected_examples(NONEMPTY)
    again = LeafPopulation(path=path, seed=3, held_out_fraction=0.2)
    for client in (0, 7, 8, 9):
        np.testing.assert_array_equal(pop.client_data(client).x, again.client_data(client).x)
    splits = {
        tuple(LeafPopulation(path=path, seed=s, held_out_fraction=0.2).client_data(8).y)
        for s in range(6)
    }
    assert len(splits) > 1  # the seed picks the held-out users


def test_leaf_no_hold_out_trains_every_user_in_file_order(tmp_path):
    path = _write_json(tmp_path / "all.json", _leaf_doc(list(USERS)))
    pop = LeafPopulation(path=path, held_out_fraction=0.0)
    assert pop.num_clients == len(NONEMPTY)
    assert pop.held_out_ids(5).shape == (0,)
    for client, user in enumerate(NONEMPTY):
        np.testing.assert_array_equal(pop.client_data(client).x, USERS[user][0].reshape(-1, 4))
        np.testing.assert_array_equal(pop.client_data(client).y, USERS[user][1])


def test_leaf_directories_with_a_test_path(tmp_path):
    users = list(USERS)
    _write_json(tmp_path / "train" / "b.json", _leaf_doc(users[5:]))
    _write_json(tmp_path / "train" / "a.json", _leaf_doc(users[:5]))
    (tmp_path / "train" / "notes.txt").write_text("not json")
    _write_json(tmp_path / "test" / "t.json", _leaf_doc(users[2:4]))
    pop = LeafPopulation(path=str(tmp_path / "train"), test_path=str(tmp_path / "test"))
    assert pop.num_clients == len(NONEMPTY)  # every training user trains
    np.testing.assert_array_equal(pop.client_data(0).y, USERS["u00"][1])  # a.json first
    held = pop.held_out_ids(25)
    np.testing.assert_array_equal(held, [pop.num_clients, pop.num_clients + 1])
    np.testing.assert_array_equal(pop.client_data(int(held[1])).x, USERS["u03"][0].reshape(-1, 4))


def test_leaf_population_pickles_with_its_data(tmp_path):
    path = _write_json(tmp_path / "all.json", _leaf_doc(list(USERS)))
    pop = LeafPopulation(path=path)
    Path(path).unlink()  # a Ray actor may not see the file
    clone = pickle.loads(pickle.dumps(pop))
    np.testing.assert_array_equal(clone.client_data(2).x, pop.client_data(2).x)
    assert clone.num_clients == pop.num_clients


def _doc_with(**changes) -> dict:
    doc = _leaf_doc(["u00", "u01"])
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (_doc_with(user_data=None), "missing key 'user_data'"),
        (_doc_with(users=None), "missing key 'users'"),
        (_doc_with(num_samples=[3]), "2 users but 1 entries"),
        (_doc_with(num_samples=[3, 2]), "user 'u01' has 1 examples, 'num_samples' says 2"),
        (_doc_with(users=["u00", "zz"], num_samples=[3, 1]), "user 'zz' is missing"),
        (_doc_with(user_data={"u00": {"x": [[1.0]] * 3}, "u01": {}}), "needs keys 'x' and 'y'"),
        (
            _doc_with(
                user_data={
                    "u00": {"x": [[1]] * 3, "y": [0, 1, 2]},
                    "u01": {"x": [[1, 2]], "y": [0]},
                }
            ),
            "user 'u01' has 2 features per example",
        ),
        (
            _doc_with(
                user_data={
                    "u00": {"x": [[1], [2, 3], [4]], "y": [0, 1, 2]},
                    "u01": {"x": [[1]], "y": [0]},
                }
            ),
            "not a numeric array",
        ),
        (
            _doc_with(
                user_data={
                    "u00": {"x": ["ab", "cd", "ef"], "y": [0, 1, 2]},
                    "u01": {"x": [[1]], "y": [0]},
                }
            ),
            "not a numeric array",
        ),
        (
            _doc_with(
                user_data={
                    "u00": {"x": [[1]] * 3, "y": ["a", "b", "c"]},
                    "u01": {"x": [[1]], "y": [0]},
                }
            ),
            "non-negative integers",
        ),
        (
            _doc_with(
                user_data={"u00": {"x": [[1]] * 3, "y": [0, -1, 2]}, "u01": {"x": [[1]], "y": [0]}}
            ),
            "non-negative integers",
        ),
        (
            _doc_with(
                user_data={"u00": {"x": [[1]] * 3, "y": [0, 1]}, "u01": {"x": [[1]], "y": [0]}}
            ),
            "2 labels",
        ),
        (_doc_with(users=["u00", "u00"], num_samples=[3, 3]), "user 'u00' is also in"),
        ([1, 2], "top level must be a JSON object"),
    ],
)
def test_leaf_malformed_file_is_a_one_line_error_naming_it(tmp_path, doc, fragment):
    path = _write_json(tmp_path / "bad.json", doc)
    with pytest.raises(ConfigError) as info:
        LeafPopulation(path=path)
    _assert_one_line_error(info, "path", "bad.json", fragment)


def test_leaf_unreadable_paths(tmp_path):
    (tmp_path / "broken.json").write_text('{"users": [')
    with pytest.raises(ConfigError) as info:
        LeafPopulation(path=str(tmp_path / "broken.json"))
    _assert_one_line_error(info, "path", "broken.json", "not valid JSON")
    with pytest.raises(ConfigError) as info:
        LeafPopulation(path=str(tmp_path / "nowhere"))
    _assert_one_line_error(info, "path", "nowhere", "no such file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as info:
        LeafPopulation(path=str(tmp_path / "empty"))
    _assert_one_line_error(info, "path", "empty", "no *.json files")
    only_empty = _write_json(tmp_path / "u10.json", _leaf_doc(["u10"]))
    with pytest.raises(ConfigError) as info:
        LeafPopulation(path=only_empty)
    _assert_one_line_error(info, "path", "no client has any example")


def test_leaf_bad_test_path_blames_test_path(tmp_path):
    path = _write_json(tmp_path / "train.json", _leaf_doc(["u00", "u01"]))
    bad = _write_json(tmp_path / "test.json", _doc_with(user_data=None))
    with pytest.raises(ConfigError) as info:
        LeafPopulation(path=path, test_path=bad)
    _assert_one_line_error(info, "test_path", "test.json", "missing key 'user_data'")
    wide = {"users": ["w"], "num_samples": [1], "user_data": {"w": {"x": [[1, 2]], "y": [0]}}}
    other = _write_json(tmp_path / "wide.json", wide)
    with pytest.raises(ConfigError) as info:
        LeafPopulation(path=path, test_path=other)
    _assert_one_line_error(info, "test_path", "wide.json", "2 features per example")


@pytest.mark.parametrize(
    ("key", "value"), [("seed", -1), ("held_out_fraction", 1.0), ("held_out_fraction", -0.1)]
)
def test_leaf_invalid_fields(tmp_path, key, value):
    path = _write_json(tmp_path / "all.json", _leaf_doc(list(USERS)))
    with pytest.raises(ConfigError) as info:
        LeafPopulation(path=path, **{key: value})
    assert info.value.key == key


# -- TFF HDF5 ------------------------------------------------------------------------------------


def test_h5_clients_in_sorted_order_with_a_test_file(tmp_path):
    users = list(USERS)
    train = _write_h5(tmp_path / "train.h5", users[::-1])  # written out of order
    test = _write_h5(tmp_path / "test.h5", ["u04", "u01"])
    pop = H5Population(path=train, test_path=test)
    assert pop.num_clients == len(NONEMPTY)
    assert (pop.num_features, pop.num_classes) == (4, 4)
    for client, user in enumerate(NONEMPTY):
        np.testing.assert_array_equal(pop.client_data(client).x, USERS[user][0].reshape(-1, 4))
    held = pop.held_out_ids(25)
    assert len(held) == 2
    np.testing.assert_array_equal(pop.client_data(int(held[0])).y, USERS["u01"][1])
    assert _all_examples(pop) == _expected_examples([*NONEMPTY, "u04", "u01"])


def test_h5_holds_out_a_fraction_and_reads_other_keys(tmp_path):
    path = _write_h5(tmp_path / "data.h5", list(USERS), x_key="tokens", y_key="target")
    pop = H5Population(path=path, x_key="tokens", y_key="target", held_out_fraction=0.3, seed=1)
    assert pop.num_clients == 7
    assert len(pop.held_out_ids(25)) == 3
    assert _all_examples(pop) == _expected_examples(NONEMPTY)
    clone = pickle.loads(pickle.dumps(pop))
    np.testing.assert_array_equal(clone.client_data(8).x, pop.client_data(8).x)


def test_h5_malformed_files(tmp_path):
    path = _write_h5(tmp_path / "data.h5", ["u00", "u01"])
    with pytest.raises(ConfigError) as info:
        H5Population(path=path, x_key="image")
    _assert_one_line_error(info, "path", "data.h5", "client 'u00' has no feature 'image'")
    not_h5 = tmp_path / "fake.h5"
    not_h5.write_text("hello")
    with pytest.raises(ConfigError) as info:
        H5Population(path=str(not_h5))
    _assert_one_line_error(info, "path", "fake.h5", "not an HDF5 file")
    with h5py.File(tmp_path / "flat.h5", "w") as handle:
        handle.create_dataset("pixels", data=np.zeros(3))
    with pytest.raises(ConfigError) as info:
        H5Population(path=str(tmp_path / "flat.h5"))
    _assert_one_line_error(info, "path", "flat.h5", "no group 'examples'")
    with h5py.File(tmp_path / "mixed.h5", "w") as handle:
        handle.create_dataset("examples/a/pixels", data=np.zeros((2, 3)))
        handle.create_dataset("examples/a/label", data=np.zeros(2, dtype=np.int32))
        handle.create_dataset("examples/b/pixels", data=np.zeros((1, 5)))
        handle.create_dataset("examples/b/label", data=np.zeros(1, dtype=np.int32))
        handle.create_dataset("examples/c/pixels", data=np.zeros((1, 3)))
        handle.create_dataset("examples/c/label", data=np.full(1, 0.5))
    with pytest.raises(ConfigError) as info:
        H5Population(path=str(tmp_path / "mixed.h5"))
    _assert_one_line_error(info, "path", "mixed.h5", "client 'c'", "non-negative integers")
    with pytest.raises(ConfigError) as info:
        H5Population(path=path, test_path=str(tmp_path / "nowhere.h5"))
    _assert_one_line_error(info, "test_path", "nowhere.h5", "no such file")


def test_h5_mixed_feature_sizes(tmp_path):
    with h5py.File(tmp_path / "mixed.h5", "w") as handle:
        handle.create_dataset("examples/a/pixels", data=np.zeros((2, 3)))
        handle.create_dataset("examples/a/label", data=np.zeros(2, dtype=np.int32))
        handle.create_dataset("examples/b/pixels", data=np.zeros((1, 5)))
        handle.create_dataset("examples/b/label", data=np.zeros(1, dtype=np.int32))
    with pytest.raises(ConfigError) as info:
        H5Population(path=str(tmp_path / "mixed.h5"))
    _assert_one_line_error(info, "path", "client 'b' has 5 features per example", "'a'")


@pytest.mark.parametrize(("key", "value"), [("x_key", ""), ("y_key", "pixels"), ("seed", 2**32)])
def test_h5_invalid_fields(tmp_path, key, value):
    path = _write_h5(tmp_path / "data.h5", ["u00", "u01"])
    with pytest.raises(ConfigError) as info:
        H5Population(path=path, **{key: value})
    assert info.value.key == key
