"""The command line as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import find_free_port

from pacs_agent.db import head_revision


def run(exe: str, *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str = ""):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_AGENT_")}
    full_env.update(env or {})
    return subprocess.run(
        [exe, *args], cwd=cwd, env=full_env, input=stdin, capture_output=True, text=True,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("toml", "env", "fragments"),
    [
        ("[dicom]\nprot = 104\n", {}, ("configuration error", "dicom.prot")),
        ('[web]\nport = "eighty"\n', {}, ("configuration error", "web.port", "integer")),
        ("", {"ECHO_AGENT_DICOM_PORT": "x"}, ("configuration error", "ECHO_AGENT_DICOM_PORT")),
    ],
)
@pytest.mark.parametrize("command", [["serve"], ["db", "upgrade"]])
def test_bad_configuration_stops_start_up_with_one_line(
    echo_agent_exe, tmp_path, toml, env, fragments, command
) -> None:
    (tmp_path / "echo-agent.toml").write_text(toml)
    result = run(echo_agent_exe, *command, cwd=tmp_path, env=env)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "var").exists(), "nothing is created before the configuration is valid"


def test_port_in_use_stops_start_up_with_one_line(echo_agent_exe, tmp_path, free_port) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_port))
        squatter.listen()
        result = run(
            echo_agent_exe,
            "serve",
            cwd=tmp_path,
            env={
                "ECHO_AGENT_WEB_PORT": str(free_port),
                "ECHO_AGENT_DICOM_PORT": str(find_free_port()),
            },
        )
    assert_one_line_error(result, "cannot start", f"port {free_port}", "already in use")


def test_serve_answers_health_on_the_configured_port(echo_agent_exe, tmp_path, free_port) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_AGENT_")}
    env["ECHO_AGENT_WEB_PORT"] = str(free_port)
    env["ECHO_AGENT_DICOM_PORT"] = str(find_free_port())
    proc = subprocess.Popen(
        [echo_agent_exe, "serve"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/healthz") as resp:
                    body = json.load(resp)
                break
            except OSError:
                time.sleep(0.2)
        assert body is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        assert body == {"status": "ok"}  # liveness only; /readyz has the checks (test_health)
        assert (tmp_path / "var" / "echo-agent.db").exists()
        assert (tmp_path / "var" / "store").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_db_upgrade_on_sqlite_and_postgres(echo_agent_exe, tmp_path, postgres_url) -> None:
    sqlite = run(echo_agent_exe, "db", "upgrade", cwd=tmp_path)
    assert sqlite.returncode == 0, sqlite.stderr
    assert head_revision() in sqlite.stdout
    pg_env = {"ECHO_AGENT_DATABASE_URL": postgres_url}
    before = run(echo_agent_exe, "db", "current", cwd=tmp_path, env=pg_env)
    assert before.stdout.strip() == "empty"
    pg = run(echo_agent_exe, "db", "upgrade", cwd=tmp_path, env=pg_env)
    assert pg.returncode == 0, pg.stderr
    after = run(echo_agent_exe, "db", "current", cwd=tmp_path, env=pg_env)
    assert after.stdout.strip() == head_revision()
    engine = sa.create_engine(postgres_url)
    try:
        assert "jobs" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_serve_refuses_a_postgres_database_that_was_not_upgraded(
    echo_agent_exe, tmp_path, postgres_url, free_port
) -> None:
    result = run(
        echo_agent_exe, "serve", cwd=tmp_path,
        env={
            "ECHO_AGENT_DATABASE_URL": postgres_url,
            "ECHO_AGENT_WEB_PORT": str(free_port),
            "ECHO_AGENT_DICOM_PORT": str(find_free_port()),
        },
    )
    assert result.returncode == 2
    assert "echo-agent db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_add_hashes_the_password_and_refuses_duplicates(echo_agent_exe, tmp_path) -> None:
    first = run(echo_agent_exe, "user", "add", "dr_who", "--role", "cardiologist",
                "--password-stdin", cwd=tmp_path, stdin="sonic screwdriver\n")
    assert first.returncode == 0, first.stderr
    again = run(echo_agent_exe, "user", "add", "dr_who", "--role", "admin",
                "--password-stdin", cwd=tmp_path, stdin="sonic screwdriver\n")
    assert_one_line_error(again, "already exists")
    no_tty = run(echo_agent_exe, "user", "add", "amy", "--role", "sonographer", cwd=tmp_path)
    assert_one_line_error(no_tty, "--password-stdin")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'var' / 'echo-agent.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT username, role, password_hash FROM users")).all()
    finally:
        engine.dispose()
    assert [(r.username, r.role) for r in rows] == [("dr_who", "cardiologist")]
    assert "sonic" not in rows[0].password_hash


def test_config_show_prints_the_effective_values(echo_agent_exe, tmp_path) -> None:
    result = run(echo_agent_exe, "config", "show", cwd=tmp_path,
                 env={"ECHO_AGENT_AE_TITLE": "LAB2"})
    assert result.returncode == 0
    assert 'ae_title = "LAB2"' in result.stdout
    assert "port = 11112" in result.stdout


def test_phantom_command_writes_loops_with_truth(echo_agent_exe, tmp_path) -> None:
    result = run(echo_agent_exe, "phantom", "out", "--n", "1", "--seed", "5", "--no-distractors",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    files = [Path(p) for p in json.loads(result.stdout)["files"]]
    assert [p.name for p in files] == ["study_0000_a4c.dcm"]
    truth = json.loads((tmp_path / "out" / "study_0000_a4c.json").read_text())
    assert truth["view"] == "A4C" and 15 <= truth["ef_percent"] <= 80
    echonet = run(echo_agent_exe, "phantom", "en", "--n", "2", "--format", "echonet", cwd=tmp_path)
    assert echonet.returncode == 0, echonet.stderr
    assert (tmp_path / "en" / "FileList.csv").read_text().startswith(
        "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split"
    )
    assert len(list((tmp_path / "en" / "Videos").glob("*.avi"))) == 2


def test_phantom_command_rejects_bad_arguments_in_one_line(echo_agent_exe, tmp_path) -> None:
    assert_one_line_error(run(echo_agent_exe, "phantom", "out", "--n", "0", cwd=tmp_path), "--n")


@pytest.mark.slow
def test_demo_sends_phantom_studies_to_itself_and_analyses_them(echo_agent_exe, tmp_path) -> None:
    """The README's run command: the node starts, receives its demo studies over DICOM and
    runs a job for each study's A4C loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_AGENT_")}
    env.update(
        ECHO_AGENT_WEB_PORT=str(find_free_port()),
        ECHO_AGENT_DICOM_PORT=str(find_free_port()),
        ECHO_AGENT_DICOM_STABLE_AGE_S="1",
        ECHO_AGENT_LLM_DRAFT="false",  # the language-model draft has its own test
    )
    proc = subprocess.Popen(
        [echo_agent_exe, "demo"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    db = tmp_path / "var" / "echo-agent.db"
    states: list[tuple[str, str]] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                engine = sa.create_engine(f"sqlite:///{db}")
                try:
                    with engine.connect() as conn:
                        states = [
                            (r.state, r.eligibility)
                            for r in conn.execute(sa.text(
                                "SELECT jobs.state, series.eligibility FROM jobs "
                                "JOIN instances ON instances.id = jobs.instance_fk "
                                "JOIN series ON series.id = instances.series_fk"
                            ))
                        ]
                except sa.exc.OperationalError:
                    states = []  # schema not there yet
                finally:
                    engine.dispose()
            if len(states) == 2 and all(s == "done" for s, _ in states):
                break
            time.sleep(1.0)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert states == [("done", "eligible"), ("done", "eligible")], output
    assert "sent 4 of 4 phantom loops" in output
    assert "Review the demo studies at http://127.0.0.1:" in output
    assert "user: demo   password: " in output, "the first run creates a demo account"
    assert proc.returncode == 0, output
