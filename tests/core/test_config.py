from __future__ import annotations

from pathlib import Path

import pytest

from eir_core.cli.train import main as eirtrain
from eir_core.config.load import build_experiment_config, parse_override, read_yaml
from eir_core.errors import ConfigError
from tests.helpers import tutorial_configs, write_yaml


def _files(tmp: Path, digits: Path) -> dict[str, Path]:
    args = tutorial_configs(tmp, digits, tmp / "run", conditional=True)
    return {"g": Path(args[1]), "a": Path(args[3]), "l": Path(args[4]), "o": Path(args[6])}


def test_tutorial_configs_validate_with_eir_defaults(tmp_path: Path, digits_dir: Path) -> None:
    f = _files(tmp_path, digits_dir)
    cfg = build_experiment_config([f["g"]], [f["a"], f["l"]], [f["o"]])
    g = cfg.global_config
    assert g.optimization.optimizer == "adabelief"
    assert g.optimization.wd == 1e-4 and g.optimization.gradient_clipping == 1.0
    assert g.training_control.early_stopping_patience == 10
    assert cfg.output_configs[0].model_config_.model_init_config.cutoff == "auto"
    assert cfg.input_configs[0].model_config_.model_init_config.kernel_width == 8
    assert cfg.input_configs[1].input_type_info.input_cat_columns == ["CLASS"]
    assert cfg.fusion_config.model_config_.fc_task_dim == 256


def test_unknown_key_names_file_path_and_nearest(tmp_path: Path, digits_dir: Path) -> None:
    f = _files(tmp_path, digits_dir)
    raw = read_yaml(f["a"])
    raw["input_type_info"]["normalisation"] = "channel"
    write_yaml(f["a"], raw)
    with pytest.raises(ConfigError) as e:
        build_experiment_config([f["g"]], [f["a"]], [f["o"]])
    msg = str(e.value)
    assert str(f["a"]) in msg and "input_type_info.normalisation" in msg and "did you mean 'normalization'" in msg


def test_unknown_global_section_is_an_error_not_ignored(tmp_path: Path, digits_dir: Path) -> None:
    f = _files(tmp_path, digits_dir)
    raw = read_yaml(f["g"])
    raw["optimisation"] = {"lr": 0.1}
    write_yaml(f["g"], raw)
    with pytest.raises(ConfigError, match="did you mean 'optimization'"):
        build_experiment_config([f["g"]], [f["a"]], [f["o"]])


def test_wrong_value_names_key_value_and_allowed(tmp_path: Path, digits_dir: Path) -> None:
    f = _files(tmp_path, digits_dir)
    with pytest.raises(ConfigError) as e:
        build_experiment_config(
            [f["g"]], [f["a"]], [f["o"]], override_tokens=["--globals.basic_experiment.batch_size=abc"]
        )
    assert "basic_experiment.batch_size='abc'" in str(e.value)
    with pytest.raises(ConfigError, match="lr_schedule.lr_schedule='weekly'.*'cycle', 'plateau', 'same' or 'cosine'"):
        build_experiment_config(
            [f["g"]], [f["a"]], [f["o"]], override_tokens=["--globals.lr_schedule.lr_schedule=weekly"]
        )


def test_valid_eir_option_not_built_here_says_so(tmp_path: Path, digits_dir: Path) -> None:
    f = _files(tmp_path, digits_dir)
    with pytest.raises(ConfigError, match=r"supported by EIR, not implemented here: globals: model.compile_model=True"):
        build_experiment_config([f["g"]], [f["a"]], [f["o"]], override_tokens=["--globals.model.compile_model=True"])
    with pytest.raises(ConfigError, match="not implemented here: model_type=transformer"):
        build_experiment_config(
            [f["g"]], [f["a"]], [f["o"]], override_tokens=["--input_mnist_array.model_config.model_type=transformer"]
        )
    raw = read_yaml(f["a"])
    raw["input_info"]["input_type"] = "omics"
    write_yaml(f["a"], raw)
    with pytest.raises(ConfigError, match="not implemented here: input_info.input_type=omics"):
        build_experiment_config([f["g"]], [f["a"]], [f["o"]])


def test_eir_multi_device_options_point_to_torchrun(tmp_path: Path, digits_dir: Path) -> None:
    f = _files(tmp_path, digits_dir)
    for token in ("--globals.accelerator.devices=2", "--globals.accelerator.strategy=ddp"):
        with pytest.raises(ConfigError, match=r"not implemented here: globals: accelerator\..*torchrun --standalone"):
            build_experiment_config([f["g"]], [f["a"]], [f["o"]], override_tokens=[token])
    build_experiment_config([f["g"]], [f["a"]], [f["o"]], override_tokens=["--globals.accelerator.devices=1"])


def test_overrides_by_file_stem_literals_and_unknown_stem(tmp_path: Path, digits_dir: Path) -> None:
    f = _files(tmp_path, digits_dir)
    cfg = build_experiment_config(
        [f["g"]],
        [f["a"]],
        [f["o"]],
        override_tokens=[
            "--globals.basic_experiment.n_epochs=3",
            "--globals.optimization.wd=0.0",
            "--input_mnist_array.input_type_info.modality_dropout_rate=0.1",
            "--globals.basic_experiment.output_folder=some/where",
        ],
    )
    assert cfg.global_config.basic_experiment.n_epochs == 3
    assert cfg.global_config.optimization.wd == 0.0
    assert cfg.input_configs[0].input_type_info.modality_dropout_rate == 0.1
    assert cfg.global_config.basic_experiment.output_folder == "some/where"
    assert parse_override("--a.b.c=[1, 2]").value == [1, 2]
    assert parse_override("--a.b.c=hello").value == "hello"
    with pytest.raises(ConfigError, match="no config file named 'global'"):
        build_experiment_config([f["g"]], [f["a"]], [f["o"]], override_tokens=["--global.basic_experiment.n_epochs=3"])


def test_global_files_merge_shallowly_later_wins(tmp_path: Path, digits_dir: Path) -> None:
    f = _files(tmp_path, digits_dir)
    extra = write_yaml(tmp_path / "more.yaml", {"optimization": {"optimizer": "adamw"}})
    cfg = build_experiment_config([f["g"], extra], [f["a"]], [f["o"]])
    # The later optimization block replaced the earlier one whole: lr is back to the default.
    assert cfg.global_config.optimization.optimizer == "adamw"
    assert cfg.global_config.optimization.lr == 3e-4


def test_yaml_aliases_non_utf8_and_non_mapping_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [1, 2]\nb: [*a, *a]\n")
    with pytest.raises(ConfigError, match="aliases"):
        read_yaml(bomb)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        read_yaml(lst)


def test_duplicate_input_names_and_checkpoint_interval_rule(tmp_path: Path, digits_dir: Path) -> None:
    f = _files(tmp_path, digits_dir)
    with pytest.raises(ConfigError, match="input_name 'mnist'"):
        build_experiment_config([f["g"]], [f["a"], f["a"]], [f["o"]])
    with pytest.raises(ConfigError, match="multiple of sample_interval"):
        build_experiment_config(
            [f["g"]], [f["a"]], [f["o"]], override_tokens=["--globals.evaluation_checkpoint.checkpoint_interval=30"]
        )


def test_cli_errors_exit_2_without_traceback(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tutorial_configs(tmp_path, digits_dir, tmp_path / "run", conditional=False)
    assert eirtrain([*args, "--globals.basic_experiment.n_epochs=zero"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eirtrain: error:") and "Traceback" not in err and "n_epochs" in err
    # An existing run is not overwritten silently.
    (tmp_path / "run" / "resume").mkdir(parents=True)
    (tmp_path / "run" / ".eirtrain-run").write_text('{"format": 2}\n')
    (tmp_path / "run" / "resume" / "state.safetensors").write_bytes(b"state")
    assert eirtrain(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err
    assert (tmp_path / "run" / "resume" / "state.safetensors").read_bytes() == b"state"
    # Unknown latent layer names list the nearest module names.
    assert (
        eirtrain(
            [
                *args,
                "--overwrite",
                "--globals.latent_sampling.layers_to_sample=['fusion_modules.computed.fusion_modules.fusion.1.9']",
            ]
        )
        == 2
    )
    assert "fusion_modules.computed.fusion_modules.fusion.1.0" in capsys.readouterr().err


def test_config_mistake_reported_before_pytorch_loads(tmp_path: Path, digits_dir: Path) -> None:
    """A fresh eirtrain checks its configs before the ~1.5 s import of PyTorch, and starts neither
    the renderer nor the read-ahead child for a run that cannot start."""
    import subprocess
    import sys

    args = tutorial_configs(tmp_path, digits_dir, tmp_path / "run", conditional=False)
    probe = (
        "import sys\n"
        "from eir_core.cli.train import main\n"
        "from eir_core.data import read_ahead\n"
        "from eir_core.train import render\n"
        "code = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'PyTorch was imported'\n"
        "assert render._prestarted is None and read_ahead._pending is None\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *args, "--globals.basic_experiment.n_epochs=zero"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("eirtrain: error:") and "n_epochs" in done.stderr and "Traceback" not in done.stderr


def test_configs_are_frozen_and_variants_are_copies(tmp_path: Path, digits_dir: Path) -> None:
    from pydantic import ValidationError

    from tests.helpers import tutorial_configs, with_values

    args = tutorial_configs(tmp_path, digits_dir, tmp_path / "run", conditional=False)
    cfg = build_experiment_config([Path(args[1])], [Path(args[3])], [Path(args[5])])
    with pytest.raises(ValidationError, match="frozen"):
        cfg.global_config.basic_experiment.n_epochs = 9  # type: ignore[misc]
    variant = with_values(
        cfg, **{"global_config.basic_experiment.n_epochs": 9, "input_configs.0.input_info.input_source": "x"}
    )
    assert (
        variant.global_config.basic_experiment.n_epochs == 9 and variant.input_configs[0].input_info.input_source == "x"
    )
    assert cfg.global_config.basic_experiment.n_epochs == 2 and cfg.input_configs[0].input_info.input_source != "x"
