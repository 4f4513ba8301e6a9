"""Configuration: defaults < TOML file < WEBCALL_* environment < flags; the README table is generated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from webcall.server.config import FIELDS, REPO_DIR, Config, markdown_table, parse_args


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "webcall.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_any_source() -> None:
    config = parse_args([], environ={})
    assert config == Config()
    assert (config.rest_host, config.rest_port, config.rate_interval) == ("127.0.0.1", 8081, 1.0)


def test_toml_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 9000\nmedia-port = 40000\nrest_port = 0\nconnect_timeout = 3\n'
                           'video_codecs = "H264"\n')
    config = parse_args(["--config", path], environ={})
    assert (config.port, config.media_port, config.rest_port) == (9000, 40000, 0)
    assert config.connect_timeout == 3.0 and isinstance(config.connect_timeout, float)
    assert config.video_codec_list == ("H264",)

    env = {"WEBCALL_PORT": "9100", "WEBCALL_CONFIG": path}
    config = parse_args([], environ=env)  # the file named by the environment, overridden by it
    assert (config.port, config.media_port) == (9100, 40000)

    config = parse_args(["--port", "9200"], environ=env)
    assert (config.port, config.media_port) == (9200, 40000)


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("bogus = 1\n", {}, "unknown option 'bogus'"),
        ('port = "80"\n', {}, "port must be an integer, not '80'"),
        ("rate_interval = true\n", {}, "rate_interval must be a number"),
        ("port = [\n", {}, "webcall.toml"),
        ("", {"WEBCALL_PORT": "eighty"}, "WEBCALL_PORT: port must be an integer"),
        ("", {"WEBCALL_RATE_INTERVAL": "0"}, "rate_interval must be > 0"),
        ("", {"WEBCALL_LOG_LEVEL": "loud"}, "log_level must be one of"),
        ("rest_port = -2\n", {}, "rest_port must be -1..65535"),
    ],
)
def test_bad_values_are_reported(tmp_path: Path, capsys, toml: str, env: dict[str, str], message: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(SystemExit) as exc:
        parse_args(["--config", path], environ=env)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_config_file_is_reported(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--config", "/nonexistent/webcall.toml"], environ={})
    assert "cannot read config file" in capsys.readouterr().err


def test_readme_table_is_the_generated_one() -> None:
    readme = (REPO_DIR / "README.md").read_text()
    assert markdown_table() in readme, "README's configuration table is stale: paste markdown_table()'s output"


def test_help_lists_every_option_with_its_environment_variable() -> None:
    out = subprocess.run([sys.executable, "-m", "webcall", "--help"], capture_output=True, text=True, cwd=REPO_DIR,
                         check=True).stdout
    text = " ".join(out.split())  # argparse wraps lines
    assert "--config PATH" in text
    for name in FIELDS:
        assert f"--{name.replace('_', '-')}" in text
        assert f"WEBCALL_{name.upper()}" in text
