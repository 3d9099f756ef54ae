from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eir_core.data.arrays import channel_first_shape, open_array_source
from eir_core.data.dataset import split_ids
from eir_core.data.normalization import compute_stats
from eir_core.data.tabular import fit_encoding, read_table
from eir_core.errors import DataError


def test_split_matches_scikit_learn_train_test_split() -> None:
    from sklearn.model_selection import train_test_split

    ids = [str(i) for i in range(1000, 1337)]
    for size in (0.1, 0.25, 50):
        train, valid = split_ids(ids, size, seed=0)
        sk_train, sk_valid = train_test_split(sorted(ids), test_size=size, random_state=0)
        assert train == list(sk_train) and valid == list(sk_valid)
    with pytest.raises(DataError, match="valid_size"):
        split_ids(ids, 5000, seed=0)


def test_array_sources_channel_first_and_mismatch_named(tmp_path: Path) -> None:
    assert channel_first_shape((5,)) == (1, 1, 5)
    assert channel_first_shape((4, 5)) == (1, 4, 5)
    assert channel_first_shape((3, 4, 5)) == (3, 4, 5)
    d = tmp_path / "arr" / "nested"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (4, 5), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        np.save(d / f"s{i}.npy", a)
    src = open_array_source(tmp_path / "arr")
    assert src.ids == ["s0", "s1", "s2"] and src.shape == (1, 4, 5) and src.dtype == np.uint8
    np.testing.assert_array_equal(src.read()[:, 0], np.stack(arrays))
    np.save(d / "s3.npy", np.zeros((4, 6), np.uint8))
    with pytest.raises(DataError, match=r"s3\.npy: shape \(4, 6\)"):
        open_array_source(tmp_path / "arr").read()
    np.save(d / "s3.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickle"):
        open_array_source(tmp_path / "arr").read()
    (d / "s3.npy").write_bytes((d / "s0.npy").read_bytes()[:-5])
    with pytest.raises(DataError, match=r"s3\.npy"):
        open_array_source(tmp_path / "arr").read()


def test_text_file_listing_npy_paths(tmp_path: Path) -> None:
    for i in range(2):
        np.save(tmp_path / f"a{i}.npy", np.full(3, i, np.float32))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'a0.npy'}\n{tmp_path / 'a1.npy'}\n")
    src = open_array_source(listing)
    assert src.ids == ["a0", "a1"] and src.shape == (1, 1, 3)


@pytest.mark.parametrize("kind", ["channel", "element", None])
def test_normalization_round_trip(kind: str | None) -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((50, 2, 3, 4)) * 255).astype(np.float32)
    stats = compute_stats(x, kind)
    t = torch.from_numpy(x)
    z = stats.normalize(t)
    if kind == "channel":
        assert stats.mean.shape == (2, 1, 1)
        assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 0.05
    if kind == "element":
        assert stats.mean.shape == (2, 3, 4)
    torch.testing.assert_close(stats.denormalize(z), t, rtol=1e-5, atol=1e-3)
    # A missing value (NaN) is imputed with the mean, so it normalizes to exactly 0.
    x_nan = x.copy()
    x_nan[0, 1, 2, 3] = np.nan
    z_nan = stats.normalize(torch.from_numpy(x_nan))
    assert float(z_nan[0, 1, 2, 3]) == 0.0
    z_nan[0, 1, 2, 3] = z[0, 1, 2, 3]
    torch.testing.assert_close(z_nan, z, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_statistics_in_chunks_equal_numpys(monkeypatch: pytest.MonkeyPatch, dtype: type) -> None:
    """compute_stats sums STATS_CHUNK rows at a time (no float64 copy of the whole set): the
    same float32 statistics as ndarray.mean/std over the whole set in float64."""
    from eir_core.data import normalization

    monkeypatch.setattr(normalization, "STATS_CHUNK", 7)  # several chunks, the last one partial
    rng = np.random.default_rng(2)
    x = (rng.random((50, 2, 3, 4)) * 255).astype(dtype)
    for kind, axes in (("channel", (0, 2, 3)), ("element", (0,))):
        stats = compute_stats(x, kind)
        mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)[0]
        std = x.std(axis=axes, keepdims=True, dtype=np.float64)[0]
        np.testing.assert_allclose(stats.mean.reshape(mean.shape), mean.astype(np.float32), rtol=1e-7)
        np.testing.assert_allclose(stats.std.reshape(std.shape), std.astype(np.float32), rtol=1e-7)
        m64, s64 = normalization._mean_std(x, axes)
        np.testing.assert_allclose(m64, mean, rtol=1e-13)
        np.testing.assert_allclose(s64, std, rtol=1e-13)


def test_tabular_vocabulary_null_and_errors(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("ID,CLASS,AGE\na,1,10\nb,0,\nc,,30\nd,7,20\n")
    table = read_table(csv, ["CLASS"], ["AGE"])
    enc = fit_encoding(table, np.array([0, 1, 2]))
    assert enc.categories["CLASS"] == ["0", "1", "__NULL__"]
    assert list(enc.cat_codes("CLASS", ["1", "7", "__NULL__"])) == [1, 2, 2]  # unseen -> NULL
    assert enc.con_mean["AGE"] == 20.0
    csv.write_text("ID,CLASS\na,1\na,2\n")
    with pytest.raises(DataError, match="'a' appears more than once"):
        read_table(csv, ["CLASS"], [])
    csv.write_text("ID,KLASS\na,1\n")
    with pytest.raises(DataError, match="columns not in the file: CLASS"):
        read_table(csv, ["CLASS"], [])
    csv.write_text("NAME,CLASS\na,1\n")
    with pytest.raises(DataError, match="no 'ID' column"):
        read_table(csv, ["CLASS"], [])


def test_ids_without_any_input_dropped_and_partial_ones_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The output's IDs are the universe; one with no input is dropped, ones with only some
    inputs stay (imputed) and are counted."""
    from eir_core.cli.train import build_parser
    from eir_core.config.load import build_experiment_config
    from eir_core.data.dataset import build_run_data
    from tests.helpers import tutorial_configs

    rng = np.random.default_rng(0)
    for folder, ids in (("out", range(8)), ("img", [0, 1, 2, 3, 4, 9])):  # s9: inputs, no output
        (tmp_path / folder).mkdir()
        for i in ids:
            np.save(tmp_path / folder / f"s{i}.npy", rng.integers(0, 255, (4, 4)).astype(np.uint8))
    (tmp_path / "labels.csv").write_text("ID,CLASS\n" + "".join(f"s{i},{i % 3}\n" for i in (2, 3, 4, 5, 6, 9)))
    (tmp_path / "cfg").mkdir()
    args, extra = build_parser().parse_known_args(
        [
            *tutorial_configs(tmp_path / "cfg", tmp_path, tmp_path / "run", conditional=True),
            f"--input_mnist_array.input_info.input_source={tmp_path / 'img'}",
            f"--input_mnist_label.input_info.input_source={tmp_path / 'labels.csv'}",
            f"--output.output_info.output_source={tmp_path / 'out'}",
            "--globals.basic_experiment.valid_size=2",
        ]
    )
    cfg = build_experiment_config(args.global_configs, args.input_configs, args.output_configs, [], extra)
    with caplog.at_level("WARNING", logger="eir_core.data.dataset"):
        data = build_run_data(cfg, seed=0)
    assert data.ids == [f"s{i}" for i in range(7)]  # s7 has neither an image nor a label; s9 no output
    assert "1 of 8 output IDs have no input at all and were dropped" in caplog.text
    assert "4 IDs lack some inputs; those inputs are imputed" in caplog.text  # s0, s1 (label) and s5, s6 (image)
