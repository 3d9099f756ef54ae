"""Settings drive the CLI: every field is a flag (kebab and snake spellings), env vars still apply,
and a field added to Settings is a flag with nothing else to change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import Field

import eir_serve.cli as cli
from eir_serve.settings import Settings


def test_every_settings_field_is_a_flag() -> None:
    options = {s for a in cli.build_parser()._actions for s in a.option_strings}
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in options, name


def test_existing_flags_keep_working(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("EIR_SERVE_")]:
        monkeypatch.delenv(k)
    s = cli.load_settings(["--model_path", "m.safetensors", "--max-batch-size", "3", "--enable-echo",
                           "--batch-timeout-ms", "2.5", "--log-level", "warning"])  # fmt: skip
    assert s.model_path == Path("m.safetensors") and s.max_batch_size == 3 and s.enable_echo is True
    assert s.batch_timeout_ms == 2.5 and s.log_level == "warning" and s.port == 8000
    assert cli.load_settings(["--model-path", "x", "--no-enable-echo"]).enable_echo is False
    monkeypatch.setenv("EIR_SERVE_MODEL_PATH", "from-env")
    monkeypatch.setenv("EIR_SERVE_MAX_QUEUE", "7")
    s = cli.load_settings(["--max-queue", "9"])
    assert s.model_path == Path("from-env") and s.max_queue == 9  # a flag wins over the environment
    assert cli.load_settings([]).max_queue == 7


def test_a_new_settings_field_becomes_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    class Grown(Settings):
        grpc_port: int | None = Field(None, ge=0, le=65535, description="also serve gRPC on this port")
        api_key: str | None = None

    monkeypatch.setattr(cli, "Settings", Grown)
    assert "also serve gRPC" in cli.build_parser().format_help()
    s = cli.load_settings(["--model-path", "m", "--grpc-port", "9001", "--api_key", "k"])
    assert isinstance(s, Grown) and s.grpc_port == 9001 and s.api_key == "k"


def test_bad_values_are_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--model-path", "m", "--port", "99999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("eirserve: error: --port (or EIR_SERVE_PORT): ")
    assert cli.main(["--model-path", "m", "--max-batch-size", "many"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err


def test_poll_on_a_bundle_file_is_refused_before_the_model_loads(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--model-path", str(tiny_bundle), "--model-control", "poll", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eirserve: error: --model-control poll watches a run folder") and "Traceback" not in err
    assert cli.main(["--model-path", str(tiny_bundle), "--poll-interval-s", "0"]) == 2
    assert "--poll-interval-s" in capsys.readouterr().err
