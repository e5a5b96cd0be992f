"""Scale-out as an operator runs it: a listener, two Celery workers and the web role as real
processes on one PostgreSQL database and one Redis broker (loopback), 20 phantom studies sent
by dcmtk storescu from several processes at once, one worker SIGKILLed while it runs a job, the
broker's queue wiped (a Redis restart that keeps nothing on disk), and every study analysed
exactly once with all its outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import held_analysis
import pytest
import redis
import sqlalchemy as sa
from dicom_helpers import file_transfer_syntax, storescu_args
from orthanc_helpers import free_tcp_port, wait_until
from support import require_or_skip

from pacs_agent.config import LlmConfig
from pacs_agent.pipeline import JOB_LOG_NAME, MEASUREMENTS_NAME, read_log

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

N_STUDIES = 20
SENDERS = 4
SEED = 20261122
REDIS_DB = 15  # this test's own database on the shared Redis, flushed before and after
# short timings so recovery happens within the test; the defaults suit real deployments
QUEUE_TIMINGS = {"heartbeat_stale_s": 15, "visibility_timeout_s": 20, "republish_after_s": 10}
ALL_DONE_TIMEOUT_S = 1800  # minutes on an idle 2-core machine; generous for a busy one
# one file per analysed loop, each written once whatever the number of attempts
EXPECTED_OUTPUTS = {
    "seg.dcm",
    "sr.dcm",
    "echo_sr.dcm",
    "fhir_bundle.json",
    "report.pdf",
    "report_pdf.dcm",
    "overlay.webm",
    "overlay_sc.dcm",
}


@pytest.fixture
def redis_url():
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        require_or_skip(f"Redis not reachable at {url}: {exc}")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def studies(request, tmp_path_factory) -> list[Path]:
    """20 single-loop phantom studies (every syntax the generator writes), rendered once and
    kept in pytest's cache."""
    from orthanc_helpers import _phantom_code_hash, phantom_cache

    from inference.phantom import generate_phantoms

    folder = phantom_cache(request.config, tmp_path_factory) / (
        f"celery-n{N_STUDIES}-seed{SEED}-{_phantom_code_hash()}"
    )
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        scratch = folder.with_name(folder.name + f".{os.getpid()}.partial")
        paths = generate_phantoms(scratch, n=N_STUDIES, seed=SEED, distractors=False)
        (scratch / "manifest.json").write_text(json.dumps([p.name for p in paths]))
        scratch.rename(folder)
    return [folder / name for name in json.loads(manifest.read_text())]


@dataclass
class Cluster:
    """The processes of one scale-out deployment, sharing a config file (database, broker,
    store), each with its own log file."""

    exe: str
    root: Path
    database_url: str
    broker_url: str
    dicom_port: int = field(default_factory=free_tcp_port)
    web_port: int = field(default_factory=free_tcp_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "echo-agent.toml"

    @property
    def home(self) -> Path:
        return self.root / "shared-home"

    def write_config(self) -> None:
        lines = [
            f'home = "{self.home}"',
            "[dicom]",
            'host = "127.0.0.1"',
            f"port = {self.dicom_port}",
            "stable_age_s = 1.0",
            "min_free_disk_mb = 0",
            "[web]",
            f"port = {self.web_port}",
            "[database]",
            f'url = "{self.database_url}"',
            "[selection]",
            'view_classifier = "phantom"',
            "[queue]",
            'backend = "celery"',
            f'broker_url = "{self.broker_url}"',
            "backoff_initial_s = 1.0",
            *(f"{key} = {value}" for key, value in QUEUE_TIMINGS.items()),
            "[llm]",
            "chat = false",
        ]
        if "draft" in LlmConfig.__dataclass_fields__:  # CPU time goes to the networks
            lines.append("draft = false")
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_AGENT_")}
        env.update(ECHO_AGENT_CONFIG=str(self.config_path), **extra)
        return env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.exe, *args], env=self.env(), capture_output=True, text=True, timeout=120
        )

    def start(
        self, name: str, args: list[str], command: list[str] | None = None, **extra_env: str
    ) -> subprocess.Popen[bytes]:
        """``echo-agent ARGS`` (or ``command``, e.g. ``held_analysis.command(*args)``)."""
        with (self.root / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                command or [self.exe, *args],
                cwd=self.root,
                env=self.env(**extra_env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, text: str, timeout_s: float = 180) -> None:
        def seen() -> bool:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{self.log(name)}")
            return text in self.log(name)

        wait_until(seen, timeout_s, f"{name} to log {text!r}", step_s=0.3)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture
def cluster(echo_agent_exe: str, postgres_url: str, redis_url: str, tmp_path: Path):
    running = Cluster(echo_agent_exe, tmp_path / "cluster", postgres_url, redis_url)
    running.write_config()
    yield running
    running.stop_all()


def rows(engine: sa.Engine, sql: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql))]


def send_from_several_processes(port: int, files: list[Path]) -> list[subprocess.CompletedProcess]:
    """``SENDERS`` threads, each running storescu for its share of the studies (one
    association per transfer syntax, as storescu proposes one syntax per file set)."""
    shares = [files[i::SENDERS] for i in range(SENDERS)]
    results: list[subprocess.CompletedProcess] = []
    lock = threading.Lock()

    def send(share: list[Path]) -> None:
        by_syntax: dict[str, list[Path]] = {}
        for path in share:
            by_syntax.setdefault(file_transfer_syntax(path), []).append(path)
        for group in by_syntax.values():
            done = subprocess.run(
                storescu_args("127.0.0.1", port, group),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            with lock:
                results.append(done)

    threads = [threading.Thread(target=send, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_listener_two_workers_and_web_process_every_study_exactly_once(
    cluster: Cluster, studies: list[Path]
) -> None:
    upgraded = cluster.run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    cluster.start("listener", ["serve", "--role", "listener"])
    cluster.start("web", ["serve", "--role", "web"])
    # worker A holds every job it takes (its segmenter never starts), so the test can kill it
    # mid-job
    worker_a = cluster.start("worker-a", ["worker"], command=held_analysis.command("worker"))
    metrics_port = free_tcp_port()
    cluster.start("worker-b", ["worker", "--metrics-port", str(metrics_port)])
    cluster.wait_log("listener", "echo-agent is running (listener)")
    cluster.wait_log("web", "echo-agent is running (web)")
    for name in ("worker-a", "worker-b"):
        cluster.wait_log(name, " ready.")

    sent = send_from_several_processes(cluster.dicom_port, studies)
    assert [r.returncode for r in sent] == [0] * len(sent), [r.stderr for r in sent]

    engine = sa.create_engine(cluster.database_url)
    try:
        a_id = f":{worker_a.pid}:celery"

        def a_holds_a_job() -> dict | None:
            for job in rows(engine, "SELECT * FROM jobs WHERE state = 'running'"):
                events = read_log(cluster.home / "jobs" / str(job["id"]))
                if job["worker_id"].endswith(a_id) and any(e["event"] == "attempt" for e in events):
                    return job
            return None

        killed_job = wait_until(a_holds_a_job, 300, "worker A to run a job", 0.5)
        worker_a.send_signal(signal.SIGKILL)
        assert worker_a.wait(timeout=30) == -signal.SIGKILL
        # a replacement worker: two workers again (any worker but A may take A's job over)
        cluster.start("worker-c", ["worker"])

        def killed_job_done() -> dict | None:
            found = rows(engine, f"SELECT * FROM jobs WHERE id = {killed_job['id']}")[0]
            return found if found["state"] in ("done", "failed") else None

        recovered = wait_until(killed_job_done, 300, "the killed worker's job to finish", 1.0)
        assert recovered["state"] == "done", recovered["last_error"]
        assert not recovered["worker_id"].endswith(a_id)
        assert recovered["attempts"] == 2

        # the broker forgets every waiting message (Redis restarted with nothing on disk):
        # the listener's sweeper publishes the queued jobs again
        queued_when_wiped = rows(engine, "SELECT id FROM jobs WHERE state IN ('queued')")
        redis.Redis.from_url(cluster.broker_url).flushdb()

        def all_terminal() -> list[dict] | None:
            found = rows(engine, "SELECT * FROM jobs ORDER BY id")
            if len(found) == N_STUDIES and all(j["state"] in ("done", "failed") for j in found):
                return found
            return None

        final = wait_until(all_terminal, ALL_DONE_TIMEOUT_S, "every job to finish", 2.0)
        if queued_when_wiped:
            assert "published again" in cluster.log("listener")

        # a delivery of a finished job (a duplicate message) changes nothing
        from pacs_agent.celery_queue import make_celery_app, publish
        from pacs_agent.config import load_config

        def ignored_deliveries() -> int:
            line = f"job {killed_job['id']}: nothing to do"
            return sum(cluster.log(n).count(line) for n in ("worker-b", "worker-c"))

        ignored_before = ignored_deliveries()
        app = make_celery_app(load_config(cluster.config_path, environ={}))
        publish(app, killed_job["id"])
        publish(app, killed_job["id"])
        app.close()
        wait_until(
            lambda: ignored_deliveries() >= ignored_before + 2,
            120,
            "both duplicate deliveries to be ignored",
            0.5,
        )

        assert [j["state"] for j in final] == ["done"] * N_STUDIES, [j["last_error"] for j in final]
        attempts = Counter(j["attempts"] for j in final)
        assert attempts == Counter({1: N_STUDIES - 1, 2: 1}), attempts
        assert rows(engine, "SELECT count(*) AS n FROM jobs WHERE state = 'running'")[0]["n"] == 0
        studies_rows = rows(engine, "SELECT id, status FROM studies")
        assert len(studies_rows) == N_STUDIES
        assert {s["status"] for s in studies_rows} == {"drafted"}
        assert len({j["study_fk"] for j in final}) == N_STUDIES, "one job per study"
        analyses = rows(engine, "SELECT job_fk FROM analyses")
        assert sorted(a["job_fk"] for a in analyses) == sorted(j["id"] for j in final)
        per_job_kind = Counter(
            (a["job_fk"], a["kind"]) for a in rows(engine, "SELECT job_fk, kind FROM artifacts")
        )
        for job in final:
            for kind in ("seg", "sr", "fhir"):
                assert per_job_kind[(job["id"], kind)] == 1, (job["id"], kind)
        assert set(per_job_kind.values()) == {1}
        reports = rows(engine, "SELECT study_fk, count(*) AS n FROM report_versions GROUP BY 1")
        assert sorted(r["n"] for r in reports) == [1] * N_STUDIES
        for job in final:
            job_dir = cluster.home / "jobs" / str(job["id"])
            assert {p.name for p in (job_dir / "outputs").iterdir()} == EXPECTED_OUTPUTS
            assert (job_dir / MEASUREMENTS_NAME).is_file()
            events = [e["event"] for e in read_log(job_dir)]
            assert events.count("analysed") == 1 and events.count("finished") == 1, job["id"]
        killed_events = read_log(cluster.home / "jobs" / str(killed_job["id"]))
        assert [e["attempt"] for e in killed_events if e["event"] == "attempt"] == [1, 2]
        assert (cluster.home / "jobs" / str(killed_job["id"]) / JOB_LOG_NAME).is_file()
        workers = Counter(j["worker_id"].rsplit(":", 2)[-2] for j in final)
        assert str(worker_a.pid) not in workers, "A's only job was taken over"

        # the web role reads the same database
        with urllib.request.urlopen(f"http://127.0.0.1:{cluster.web_port}/healthz") as resp:
            assert resp.status == 200
        # the web role's /metrics counts from the shared database; a worker's, its own models
        with urllib.request.urlopen(f"http://127.0.0.1:{cluster.web_port}/metrics") as resp:
            shared = resp.read().decode()
        assert f'echo_agent_studies{{state="drafted"}} {float(N_STUDIES)}' in shared
        assert 'echo_agent_jobs{state="running"} 0.0' in shared
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
            own = resp.read().decode()
        assert 'echo_agent_model_ready{model="cnn"} 1.0' in own
        assert "echo_agent_model_load_seconds" in own and "echo_agent_studies" not in own
    finally:
        engine.dispose()

    for name in ("listener", "web", "worker-b", "worker-c"):
        proc = cluster.procs[name]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, cluster.log(name)


def test_a_listener_killed_mid_association_keeps_no_partial_instance_and_the_retry_stores_all(
    cluster: Cluster, studies: list[Path]
) -> None:
    upgraded = cluster.run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    listener = cluster.start("listener", ["serve", "--role", "listener"])
    cluster.wait_log("listener", "echo-agent is running (listener)")
    # the uncompressed loops (tens of MB each) in one association, so it is caught mid-way
    native = [p for p in studies if file_transfer_syntax(p) == "1.2.840.10008.1.2.1"]
    assert len(native) >= 4
    sender = subprocess.Popen(
        storescu_args("127.0.0.1", cluster.dicom_port, native),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine = sa.create_engine(cluster.database_url)
    try:
        count = "SELECT count(*) AS n FROM instances"
        wait_until(lambda: rows(engine, count)[0]["n"] >= 1, 120, "a first stored instance", 0.05)
        assert sender.poll() is None, "the association ended before the listener was killed"
        listener.send_signal(signal.SIGKILL)
        assert listener.wait(timeout=30) == -signal.SIGKILL
        assert sender.wait(timeout=120) != 0, "the sender saw its association fail"
        stored_before = rows(engine, count)[0]["n"]
        assert 1 <= stored_before < len(native)

        cluster.start("listener-2", ["serve", "--role", "listener"])
        cluster.wait_log("listener-2", "echo-agent is running (listener)")
        incoming = cluster.home / "store" / ".incoming"
        assert list(incoming.iterdir()) == [], "no partial file survives a restart"
        retry = subprocess.run(
            storescu_args("127.0.0.1", cluster.dicom_port, native),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert retry.returncode == 0, retry.stderr
        assert rows(engine, count)[0]["n"] == len(native), "each instance stored once"
        stored_files = [
            p for p in (cluster.home / "store").rglob("*.dcm") if ".incoming" not in p.parts
        ]
        assert len(stored_files) == len(native)
        wait_until(
            lambda: rows(engine, "SELECT count(*) AS n FROM jobs")[0]["n"] == len(native),
            120,
            "one job per study",
            0.5,
        )
    finally:
        engine.dispose()
