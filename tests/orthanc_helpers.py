"""Helpers for tests against real peers: an Orthanc server as the PACS, the phantom studies the
node and the PACS exchange (rendered once and cached), and a node configuration for a test.

Orthanc runs from ``/usr/sbin/Orthanc`` with a throwaway JSON configuration: its own storage,
free ports on loopback, no plugins, no authentication, remote access off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
ORTHANC_EXE = "/usr/sbin/Orthanc"
ORTHANC_AET = "ORTHANC"
# Debian's orthanc-dicomweb: QIDO-RS, WADO-RS and STOW-RS under /dicom-web/
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.1):
    """Polls ``predicate`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(step_s)


# --- Orthanc ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: REST on ``http_port``, DICOM on ``dicom_port``, both on loopback."""

    http_port: int
    dicom_port: int
    aet: str
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def request(self, method: str, path: str, body: bytes | dict | list | None = None) -> Any:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if isinstance(body, dict | list):
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=120) as resp:
            payload = resp.read()
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            return payload.decode(errors="replace")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: bytes | dict | list) -> Any:
        return self.request("POST", path, body)

    def upload(self, path: Path) -> dict:
        """POST /instances: the file as a PACS would hold it."""
        return self.post("/instances", path.read_bytes())

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc's id of the instance with this SOP Instance UID, or None."""
        found = self.post("/tools/lookup", sop_instance_uid.encode())
        for item in found or []:
            if item.get("Type") == "Instance":
                return str(item["ID"])
        return None


def orthanc_configuration(
    workdir: Path,
    http_port: int,
    dicom_port: int,
    modalities: dict[str, tuple[str, str, int]],
    dicomweb: bool = False,
) -> dict[str, Any]:
    """``dicomweb``: load the DICOMweb plugin (its root ``/dicom-web/``)."""
    config: dict[str, Any] = {
        "Name": "echo-agent-test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "Plugins": [],
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "DicomScuTimeout": 30,
        "StableAge": 1,
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "LuaScripts": [],
    }
    if dicomweb:
        config["Plugins"] = [DICOMWEB_PLUGIN]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    return config


@contextlib.contextmanager
def run_orthanc(
    workdir: Path,
    modalities: dict[str, tuple[str, str, int]],
    timeout_s: float = 60.0,
    dicomweb: bool = False,
) -> Iterator[Orthanc]:
    """Starts Orthanc (with its DICOMweb plugin when ``dicomweb``), waits for its REST API,
    stops it (and checks it stopped) afterwards."""
    if not os.access(ORTHANC_EXE, os.X_OK):
        from conftest import require_or_skip

        require_or_skip(f"Orthanc is not installed at {ORTHANC_EXE}")
    if dicomweb and not os.path.isfile(DICOMWEB_PLUGIN):
        from conftest import require_or_skip

        require_or_skip(f"Orthanc's DICOMweb plugin is not installed at {DICOMWEB_PLUGIN}")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_tcp_port(), free_tcp_port()
    config_path = workdir / "orthanc.json"
    config_path.write_text(
        json.dumps(
            orthanc_configuration(workdir, http_port, dicom_port, modalities, dicomweb), indent=1
        )
    )
    log_path = workdir / "orthanc.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [ORTHANC_EXE, str(config_path)], stdout=log_file, stderr=subprocess.STDOUT
        )
    server = Orthanc(http_port, dicom_port, ORTHANC_AET, workdir)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited early:\n{log_path.read_text()[-3000:]}")
        try:
            return bool(server.get("/system"))
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(answers, timeout_s, "Orthanc's REST API", step_s=0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- phantom studies --------------------------------------------------------------------------


def _phantom_code_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "inference").rglob("*.py")):
        if "phantom" in path.parts or path.name == "disks.py":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def phantom_studies(cache_root: Path, n: int, seed: int) -> list[Path]:
    """``generate_phantoms(n, seed)`` rendered once per generator version and reused.

    Rendering takes seconds per study on two cores; the files depend only on (n, seed) and
    the generator's code, which is what the folder name holds.
    """
    from inference.phantom import generate_phantoms

    folder = cache_root / f"phantoms-n{n}-seed{seed}-{_phantom_code_hash()}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return [folder / name for name in json.loads(manifest.read_text())]
    for stale in cache_root.glob(f"phantoms-n{n}-seed{seed}-*"):  # an older generator's
        if stale != folder and not stale.name.endswith(".partial"):
            shutil.rmtree(stale, ignore_errors=True)
    if folder.exists():
        shutil.rmtree(folder)
    scratch = folder.with_name(folder.name + f".{os.getpid()}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    paths = generate_phantoms(scratch, n=n, seed=seed)
    (scratch / "manifest.json").write_text(json.dumps([p.name for p in paths]))
    try:
        scratch.rename(folder)
    except OSError:  # another process rendered it meanwhile
        shutil.rmtree(scratch, ignore_errors=True)
    return [folder / p.name for p in paths]


def truth(path: Path) -> dict[str, Any]:
    return json.loads(path.with_suffix(".json").read_text())


# --- node configuration -----------------------------------------------------------------------


def node_config_text(
    home: Path,
    dicom_port: int,
    web_port: int,
    database_url: str = "",
    stable_age_s: float = 1.0,
    view_classifier: str = "phantom",
    destinations: tuple[tuple[str, str, str, int], ...] = (),
    export_max_attempts: int = 3,
    export_backoff_initial_s: float = 0.05,
) -> str:
    """TOML for a node on loopback with short timings; destinations as (name, aet, host, port)."""
    lines = [
        f'home = "{home}"',
        "[dicom]",
        'host = "127.0.0.1"',
        f"port = {dicom_port}",
        f"stable_age_s = {stable_age_s}",
        "min_free_disk_mb = 0",
        "[web]",
        f"port = {web_port}",
        "[database]",
        f'url = "{database_url}"',
        "[selection]",
        f'view_classifier = "{view_classifier}"',
        "[export]",
        f"max_attempts = {export_max_attempts}",
        f"backoff_initial_s = {export_backoff_initial_s}",
        "backoff_max_s = 1.0",
        "[llm]",
        "draft = false",  # the language-model draft has its own test
    ]
    for name, aet, host, port in destinations:
        lines += [
            "[[destinations]]",
            f'name = "{name}"',
            f'ae_title = "{aet}"',
            f'host = "{host}"',
            f"port = {port}",
        ]
    return "\n".join(lines) + "\n"


def phantom_cache(pytest_config: Any, tmp_path_factory: Any) -> Path:
    """pytest's cache folder (kept between runs) when it is on, else this run's temp folder."""
    cache = getattr(pytest_config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("echo-agent-phantoms"))
    return Path(tmp_path_factory.mktemp("phantoms"))
