"""Training data and configs that cannot train are refused with one line naming the file (and
the column or element), before a run folder is made; odd but valid files just work."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from eir_core.cli.train import main as eirtrain
from eir_core.data.tabular import read_table
from eir_core.errors import DataError
from tests.helpers import tutorial_configs

N = 260  # the helper's configs hold out 200 for validation


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeWarning" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("eirtrain: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _float_digits(root: Path, fill: dict[int, np.ndarray] | None = None) -> Path:
    """``root/mnist_npy/<id>.npy``: 8x8 float32 arrays, some replaced by ``fill``, plus labels."""
    d = root / "mnist_npy"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(N):
        a = (fill or {}).get(i, rng.random((8, 8), dtype=np.float32))
        np.save(d / f"{10000 + i}.npy", a.astype(np.float32))
    with (root / "mnist_labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "CLASS"])
        w.writerows([[10000 + i, i % 10] for i in range(N)])
    return root


def test_all_nan_arrays_are_refused_naming_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nan = np.full((8, 8), np.nan, np.float32)
    data = _float_digits(tmp_path / "data", {i: nan for i in range(N)})
    run = tmp_path / "run"
    assert eirtrain(tutorial_configs(tmp_path, data, run, conditional=False)) == 2
    line = _one_error_line(capsys)
    assert str(data / "mnist_npy") in line and "every value" in line and "NaN" in line
    assert not run.exists()


def test_an_element_that_is_nan_everywhere_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    holed = {}
    for i in range(N):
        a = rng.random((8, 8), dtype=np.float32)
        a[3, 5] = np.nan
        holed[i] = a
    data = _float_digits(tmp_path / "data", holed)
    assert eirtrain(tutorial_configs(tmp_path, data, tmp_path / "run", conditional=False)) == 2
    line = _one_error_line(capsys)
    assert "element (0, 3, 5)" in line and str(data / "mnist_npy") in line


def test_an_infinite_value_is_refused_naming_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = np.zeros((8, 8), np.float32)
    bad[0, 0] = np.inf
    data = _float_digits(tmp_path / "data", dict.fromkeys(range(N), bad))
    assert eirtrain(tutorial_configs(tmp_path, data, tmp_path / "run", conditional=False)) == 2
    line = _one_error_line(capsys)
    assert "infinite" in line and ".npy" in line and str(data / "mnist_npy") in line


def test_a_csv_column_without_numbers_and_infinite_cells_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("ID,AGE\na,\nb,nan\n")
    from eir_core.data.tabular import fit_encoding

    with pytest.raises(DataError, match=r"t\.csv: column 'AGE' has no number in any training row"):
        fit_encoding(read_table(f, [], ["AGE"]), np.array([0, 1]))
    f.write_text("ID,AGE\na,1\nb,inf\n")
    with pytest.raises(DataError, match=r"t\.csv: column 'AGE' line 3: 'inf' is not a finite number"):
        read_table(f, [], ["AGE"])
    f.write_text("ID,CLASS\na,\nb,\n")
    with pytest.raises(DataError, match=r"t\.csv: column 'CLASS' is empty in every training row"):
        fit_encoding(read_table(f, ["CLASS"], []), np.array([0, 1]))


def test_a_csv_with_a_byte_order_mark_reads_its_id_column(tmp_path: Path) -> None:
    f = tmp_path / "labels.csv"
    f.write_bytes("\ufeffID,CLASS\n1,7\n2,3\n".encode())  # as Excel saves "CSV UTF-8"
    table = read_table(f, ["CLASS"], [])
    assert table.ids == ["1", "2"] and table.cat["CLASS"] == ["7", "3"]


def test_a_csv_that_matches_no_sample_id_says_so(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("ID,CLASS\n" + "".join(f"img_{i},{i % 10}\n" for i in range(50)))
    args = [*tutorial_configs(tmp_path, digits_dir, tmp_path / "run", conditional=True)]
    args.append(f"--input_mnist_label.input_info.input_source={labels}")
    assert eirtrain(args) == 2
    line = _one_error_line(capsys)
    assert "input 'mnist_label'" in line and str(labels) in line and "'img_0'" in line
    assert "none of the 50 IDs" in line and "is a sample ID of the outputs" in line
    assert not (tmp_path / "run").exists()


def test_deeply_nested_yaml_is_one_clear_line(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tutorial_configs(tmp_path, digits_dir, tmp_path / "run", conditional=False)
    deep = tmp_path / "globals.yaml"
    deep.write_text("basic_experiment: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert eirtrain(args) == 2
    line = _one_error_line(capsys)
    assert str(deep) in line and "nested more than 64 levels" in line


@pytest.mark.long
def test_a_tilde_in_output_folder_means_the_home_folder(
    tmp_path: Path, digits_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    args = [
        *tutorial_configs(work, digits_dir, Path("~/runs/ae"), conditional=False),
        "--globals.basic_experiment.n_epochs=1",
    ]
    assert eirtrain(args) == 0
    assert list((home / "runs" / "ae" / "saved_models").glob("ae_checkpoint_*.safetensors"))
    assert not (work / "~").exists()
