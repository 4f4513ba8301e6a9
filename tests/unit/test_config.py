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


def test_apps_tables_give_per_app_hook_urls(tmp_path: Path) -> None:
    path = write(tmp_path, 'hook_url = "http://127.0.0.1:9091/EchoApp"\n'
                           '[apps.roomApp]\nhook_url = "https://backend.example/hooks"\n'
                           '[apps.defaultApp]\nhook-url = "http://overridden.example/"\n')
    config = parse_args(["--config", path], environ={})
    assert config.hook_urls() == {"roomApp": "https://backend.example/hooks",
                                  "defaultApp": "http://127.0.0.1:9091/EchoApp"}
    config = parse_args(["--config", path, "--hook-url", "http://flag.example/"], environ={})
    assert config.hook_urls()["defaultApp"] == "http://flag.example/"  # --hook-url is defaultApp's
    assert parse_args([], environ={}).hook_urls() == {}  # no URL: no hooks at all
    assert "apps" not in FIELDS  # a table: no flag, no environment variable, no README row


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("apps = 1\n", "apps must be a table"),
        ("[apps]\nroomApp = 1\n", "apps.roomApp must be a table"),
        ('[apps.roomApp]\nport = 1\n', "unknown option 'port' in [apps.roomApp]"),
        ("[apps.roomApp]\nhook_url = 1\n", "apps.roomApp.hook_url must be a string"),
        ('[apps.roomApp]\nhook_url = "ftp://x"\n', "hook_url of app 'roomApp' must start with http"),
        ('hook_timeout = 0\n', "hook_timeout must be > 0"),
        ('allow_origins = "https://a.com/path"\n', "bad origin pattern"),
        ('allow_origins = "a.*.com"\n', "only a leading"),
    ],
)
def test_bad_hook_settings_are_reported(tmp_path: Path, capsys, toml: str, message: str) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--config", write(tmp_path, toml)], environ={})
    assert message in capsys.readouterr().err


def test_media_tcp_port_follows_the_media_port_unless_given() -> None:
    assert parse_args([], environ={}).media_tcp_port_number() == 31001
    assert parse_args(["--media-port", "40000"], environ={}).media_tcp_port_number() == 40000
    assert parse_args(["--media-port", "0"], environ={}).media_tcp_port_number() == 0  # any free port
    assert parse_args(["--media-tcp-port", "off"], environ={}).media_tcp_port_number() == -1
    assert parse_args(["--media-tcp-port", "-1"], environ={}).media_tcp_port_number() == -1
    assert parse_args([], environ={"WEBCALL_MEDIA_TCP_PORT": "443"}).media_tcp_port_number() == 443
    for bad in ("tcp", "70000", "-2"):
        with pytest.raises(ValueError):
            Config(media_tcp_port=bad).validate()
