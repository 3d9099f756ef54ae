"""The OpenAPI example and the warm-up item are one builder, valid for every bundle: also when
a column's categories sort after the missing-value marker ``__NULL__`` (lowercase names) or are
numeric strings."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from eir_core.bundle import read_manifest
from eir_core.cli.train import main as eirtrain
from eir_core.data.tabular import NULL
from eir_core.manifest import ArrayInput, TabularInput
from eir_serve.app import create_app
from eir_serve.service import example_payload
from eir_serve.settings import Settings
from tests.helpers import tutorial_configs, write_yaml

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CODES = ["10", "07", "3"]  # numeric strings; "07" is not the integer 7


@pytest.fixture(scope="module")
def words_bundle(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    """Image + a label input with a lowercase column (WORD), a numeric-string one (CODE) and a
    continuous one (WEIGHT)."""
    tmp = tmp_path_factory.mktemp("words")
    with (digits_dir / "mnist_labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    labels = tmp / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "WORD", "CODE", "WEIGHT"])
        for i, r in enumerate(rows):
            w.writerow([r["ID"], WORDS[int(r["CLASS"])], CODES[i % 3], 1.0 + i % 5])
    run = tmp / "run"
    args = tutorial_configs(tmp, digits_dir, run, conditional=False, basic_experiment={"n_epochs": 1})
    label = {
        "input_info": {"input_source": str(labels), "input_name": "tags", "input_type": "tabular"},
        "input_type_info": {"input_cat_columns": ["WORD", "CODE"], "input_con_columns": ["WEIGHT"]},
    }
    at = args.index("--input_configs") + 2
    args.insert(at, str(write_yaml(tmp / "input_tags.yaml", label)))
    assert eirtrain(args) == 0
    return run


def test_the_example_of_a_lowercase_and_numeric_string_bundle_is_accepted(words_bundle: Path) -> None:
    app = create_app(Settings(model_path=words_bundle, device="cpu"))
    with TestClient(app) as client:  # the warm-up predicted dummy_item: the app started
        info = client.get("/info").json()
        assert info["inputs"]["tags"]["categorical_columns"] == {"WORD": sorted(WORDS), "CODE": sorted(CODES)}
        spec = client.get("/openapi.json").json()
        body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        example = body["examples"]["this model"]["value"]
        tags = example[0]["tags"]
        assert tags == {"WORD": "eight", "CODE": "07", "WEIGHT": pytest.approx(3.0, abs=0.05)}  # its mean
        r = client.post("/predict", json=example)
        assert r.status_code == 200, r.text
        # An integer only stands for the category it spells: 7 is not "07".
        r = client.post("/predict", json=[{**example[0], "tags": {**tags, "WORD": "one", "CODE": 7}}])
        assert r.status_code == 422 and "unknown category '7'" in r.json()["error"]["message"]
        r = client.post("/predict", json=[{**example[0], "tags": {**tags, "WORD": "one", "CODE": 10}}])
        assert r.status_code == 200, r.text
        # Every column of a given tabular input needs a value; a missing one is named.
        for gone in ("WEIGHT", "CODE"):
            r = client.post("/predict", json=[{**example[0], "tags": {k: v for k, v in tags.items() if k != gone}}])
            assert r.status_code == 422, r.text
            assert r.json()["error"]["details"][0]["field"] == f"tags.{gone}", r.text


def test_dummy_item_never_uses_the_missing_value_marker(tiny_bundle: Path) -> None:
    real = read_manifest(tiny_bundle)
    manifest = real.model_copy(
        update={
            "inputs": [
                ArrayInput(name="img", shape=(2, 3), dtype="<f4"),
                TabularInput(
                    name="t",
                    cat_columns=["a", "B"],
                    con_columns=["x"],
                    categories={"a": [NULL, "cat", "dog"], "B": ["A", "Z", NULL]},
                ),
            ]
        }
    )
    item = manifest.dummy_item()
    assert item["t"] == {"a": "cat", "B": "A", "x": 0.0}  # every column has a value; x at its (unknown: 0) mean
    assert item["img"].shape == (2, 3) and item["img"].dtype == np.float32 and not item["img"].any()
    assert example_payload(manifest)[0]["t"] == item["t"]
    assert example_payload(manifest)[0]["img"] == "A" * 32  # base64 of 24 zero bytes
