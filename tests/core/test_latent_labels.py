"""The t-SNE of latents is coloured by a label: a categorical input's, else a labels CSV beside the
array folder (EIR's tutorial layout: mnist_labels.csv beside mnist_npy/), else it says why not."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from eir_core.train.artifacts import labels_beside, latent_labels


def test_labels_csv_beside_the_array_folder_colours_the_autoencoders_tsne(digits_dir: Path, tmp_path: Path) -> None:
    table = labels_beside([digits_dir / "mnist_npy"])
    assert table is not None and table.column == "CLASS" and table.path.name == "mnist_labels.csv"
    assert table.values["10001"] == "1"
    data = SimpleNamespace(ids=["10000", "10001"], inputs={})  # an autoencoder: no tabular input
    labels, by = latent_labels(data, ["10001", "10000"], table)  # type: ignore[arg-type]
    assert labels == ["1", "0"] and by == "CLASS from mnist_labels.csv (not a model input)"
    assert latent_labels(data, ["10001", "12345"], table) == (None, "")  # an ID it has no label for


def test_no_usable_labels_csv(tmp_path: Path) -> None:
    (tmp_path / "arr").mkdir()
    assert labels_beside([tmp_path / "arr"]) is None
    (tmp_path / "notes.csv").write_text("name,value\na,1\n")  # first column is not ID
    assert labels_beside([tmp_path / "arr"]) is None
    (tmp_path / "scores.csv").write_text("ID,score\n" + "".join(f"{i},{i * 0.5}\n" for i in range(100)))
    assert labels_beside([tmp_path / "arr"]) is None  # 100 distinct values: not a label to colour by
    (tmp_path / "z_labels.csv").write_text("\ufeffID,kind\n1,a\n2,b\n")  # Excel's byte-order mark
    table = labels_beside([tmp_path / "arr"])
    assert table is not None and table.column == "kind" and table.values == {"1": "a", "2": "b"}
