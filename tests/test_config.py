"""Configuration: the documented defaults, file and environment precedence, and one clear
message naming the key for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_agent.config import ConfigError, as_toml, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "echo-agent.toml"
    path.write_text(text)
    return path


def test_defaults_run_on_one_machine(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.source == "defaults"
    assert (config.dicom.port, config.dicom.ae_title) == (11112, "ECHOAGENT")
    assert (config.web.host, config.web.port) == ("127.0.0.1", 8080)
    assert config.home_path == tmp_path / "var"
    assert config.database_url == f"sqlite:///{tmp_path / 'var' / 'echo-agent.db'}"
    assert config.store_path == tmp_path / "var" / "store"
    assert config.queue.backend == "local"
    assert config.dicom.stable_age_s == 10.0


def test_file_in_working_directory_is_found_and_environment_wins(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        'home = "/srv/echo"\n[dicom]\nport = 104\nallowed_calling_aes = ["PACS1", "US01"]\n'
        "stable_age_s = 5\n[web]\nport = 9000\n",
    )
    config = load_config(environ={"ECHO_AGENT_WEB_PORT": "9100", "ECHO_AGENT_AE_TITLE": "NODE2"})
    assert config.source == "echo-agent.toml"
    assert config.dicom.port == 104
    assert config.dicom.allowed_calling_aes == ["PACS1", "US01"]
    assert config.dicom.stable_age_s == 5.0 and isinstance(config.dicom.stable_age_s, float)
    assert config.web.port == 9100
    assert config.dicom.ae_title == "NODE2"
    assert config.store_path == Path("/srv/echo/store")


def test_environment_names_follow_the_design(tmp_path) -> None:
    config = load_config(
        environ={
            "ECHO_AGENT_HOME": str(tmp_path / "h"),
            "ECHO_AGENT_DICOM_PORT": "4242",
            "ECHO_AGENT_DATABASE_URL": "postgresql+psycopg://u@db/echo",
            "ECHO_AGENT_DICOM_ALLOWED_CALLING_AES": "A, B ,C",
            "ECHO_AGENT_DATABASE_ECHO_SQL": "yes",
            "ECHO_AGENT_CONFIG": "",
            "ECHO_AGENT_TEST_ANYTHING": "ignored",
        }
    )
    assert config.home_path == tmp_path / "h"
    assert config.dicom.port == 4242
    assert config.database_url == "postgresql+psycopg://u@db/echo"
    assert config.dicom.allowed_calling_aes == ["A", "B", "C"]
    assert config.database.echo_sql is True


def test_config_file_from_environment_variable(tmp_path) -> None:
    path = write(tmp_path, "[dicom]\nport = 2000\n")
    assert load_config(environ={"ECHO_AGENT_CONFIG": str(path)}).dicom.port == 2000


@pytest.mark.parametrize(
    ("toml", "environ", "message"),
    [
        ("[dicom]\nprot = 1\n", {}, "unknown key 'dicom.prot'"),
        ("[dicomm]\nport = 1\n", {}, "unknown key 'dicomm'"),
        ("dicom = 3\n", {}, "[dicom]"),
        ('[dicom]\nport = "11112"\n', {}, "dicom.port in .* must be an integer"),
        ("[dicom]\nport = true\n", {}, "dicom.port in .* must be an integer"),
        ("[dicom]\nallowed_calling_aes = \"PACS\"\n", {}, "list of strings"),
        ("[web]\nport = 70000\n", {}, "web.port must be between 1 and 65535"),
        ('[dicom]\nae_title = "MUCH_TOO_LONG_AE_TITLE"\n', {}, "dicom.ae_title"),
        ('[queue]\nbackend = "kafka"\n', {}, "queue.backend must be one of celery, local"),
        ("[queue]\nworkers = 0\n", {}, "queue.workers must be at least 1"),
        ("[dicom\nport = 1\n", {}, "not valid TOML"),
        ("", {"ECHO_AGENT_DICOM_PORT": "eleven"}, "dicom.port .*ECHO_AGENT_DICOM_PORT"),
        ("", {"ECHO_AGENT_WEB_PROT": "1"}, "unknown environment variable ECHO_AGENT_WEB_PROT"),
        ("", {"ECHO_AGENT_DATABASE_ECHO_SQL": "maybe"}, "database.echo_sql must be true or false"),
    ],
)
def test_mistakes_name_the_key(tmp_path, toml: str, environ: dict, message: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ=environ)


def test_an_explicit_file_must_exist(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_effective_configuration_renders_as_toml_that_loads_back(tmp_path) -> None:
    original = load_config(
        write(tmp_path, '[dicom]\nallowed_calling_aes = ["A\\"B"]\nport = 5\n'), environ={}
    )
    rendered = tmp_path / "rendered.toml"
    rendered.write_text(as_toml(original))
    again = load_config(rendered, environ={})
    assert again == original


def test_the_example_file_documents_exactly_the_defaults() -> None:
    example = Path(__file__).resolve().parents[1] / "echo-agent.example.toml"
    assert load_config(example, environ={}) == load_config(environ={})


def test_destinations_are_an_array_of_tables(tmp_path) -> None:
    path = write(
        tmp_path,
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n'
        '[[destinations]]\nname = "archive"\nae_title = "ARCH"\nhost = "10.0.0.5"\n',
    )
    config = load_config(path, environ={})
    assert [(d.name, d.ae_title, d.port) for d in config.destinations] == [
        ("pacs", "ORTHANC", 4242),
        ("archive", "ARCH", 104),
    ]
    rendered = tmp_path / "rendered.toml"
    rendered.write_text(as_toml(config))
    assert load_config(rendered, environ={}) == config


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[destinations]]\nname = "p"\nae_title = "A"\nhost = "h"\nprot = 1\n',
         r"unknown key 'destinations\[0\].prot'"),
        ('[[destinations]]\nname = "p"\nae_title = "A"\n', r"destinations\[0\].host must be set"),
        ('[[destinations]]\nname = "p"\nae_title = "A"\nhost = "h"\n' * 2, "used twice"),
        ('[[destinations]]\nname = "p"\nae_title = "A"\nhost = "h"\nport = "x"\n', "integer"),
        ('destinations = "pacs"\n', "array of tables"),
        ('[dicom]\ntls_cert_file = "c.pem"\n', "set together"),
    ],
)
def test_destination_and_tls_mistakes_name_the_key(tmp_path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, toml), environ={})
