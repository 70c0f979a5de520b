"""Shared pytest fixtures for every test package (generic; reuse them, don't copy them).

- ``free_port()`` / ``free_port`` fixture: a TCP port free on 127.0.0.1 right now.
- ``phantom_files`` fixture: the 5 mm phantom's files as bytes (for mutating tests; ``tests/hostile_geometry.py``
  has the hostile values).
- ``ct_data`` fixture: the real CT series folder (``../shared/data/ct`` beside the repo, or
  ``$ICH_CT_DATA``); tests that need it are skipped when it is absent.
- ``dcmtk`` fixture: ``dcmtk("storescu", "-aec", "NODE", "127.0.0.1", port, path)`` runs a dcmtk tool
  with a timeout and returns the ``CompletedProcess`` (stdout/stderr as text, never raises on a
  non-zero exit so tests can assert refusals). Skips when dcmtk is not installed.
- ``require_tool(name)``: skip the test unless an executable is on PATH.
- ``StoreSCP(tmp).start()``: dcmtk ``storescp`` (AE ``DEST``) on a loopback port, as a destination to send to;
  ``wait_port(port)`` waits until something listens; ``RedisServer(tmp, port).start()``: a throw-away
  redis-server (``.url``, ``.stop()``); ``stop_process(proc)``: SIGTERM, then SIGKILL after a grace time.
- A node under test: ``fake_module`` fixture (the fast test double of the analysis, ``FAKE_ANALYZER``),
  ``node_config(tmp, port, dest_port)``, ``take_ct_series`` (a ``decide``), ``wait_for(pred)``, and
  ``scrape(port)`` / ``metric_value(text, name, **labels)`` for its /metrics.
- hypothesis profiles (property-based fuzz tests, ``tests/**/test_*_fuzz.py``): ``ci`` (derandomized,
  no example database: the same examples on every run) is loaded when ``CI`` is set, ``dev`` (random
  examples, still no database file in the repo) otherwise. ``HYPOTHESIS_PROFILE=explore`` (random) makes
  the fuzz tests run 20× their examples (each scales its own ``max_examples``) to hunt for new bugs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]

# Nodes started by tests get a 16 MB write-ahead journal instead of the 256 MB default: dozens of
# data dirs per run would otherwise pre-write gigabytes (and the small journal wraps often, which
# the tests then exercise). Subprocess nodes read the environment; in-process configs the default.
TEST_JOURNAL_MB = 16
os.environ.setdefault("ICH_NODE__STORAGE__JOURNAL_MB", str(TEST_JOURNAL_MB))


def small_config():
    """``NodeConfig()`` with the tests' small journal (the production default stays 256 MB: a test
    that checks defaults sees the real ones)."""
    from dicomnode.config import NodeConfig

    cfg = NodeConfig()
    cfg.storage.journal_mb = TEST_JOURNAL_MB
    return cfg


def _hypothesis_profiles() -> None:
    from hypothesis import HealthCheck, settings

    common = dict(database=None, deadline=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("ci", derandomize=True, **common)
    settings.register_profile("dev", **common)
    settings.register_profile("explore", **common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


_hypothesis_profiles()


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """Call it for each port you need: ``p = free_port()``."""
    return free_port


def unavailable(message: str) -> NoReturn:
    """Skip on a developer's machine; FAIL under CI (``CI`` set): there a test that did not run because a
    tool or data set is missing is a missing install step, not a pass."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not installed (make test installs dcmtk, orthanc, dicom3tools)")
    return path


def ct_data_dir() -> Path | None:
    candidates = [os.environ.get("ICH_CT_DATA"), REPO.parent / "shared" / "data" / "ct", "/work/shared/data/ct"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def ct_data() -> Path:
    """Folder with ge-human-head-tilted/, philips-phantom-5mm/, philips-phantom-thin/ (read-only)."""
    d = ct_data_dir()
    if d is None:
        unavailable("real CT data (../shared/data/ct) not available")
    return d


def run_dcmtk(tool: str, *args: object, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a dcmtk command line tool; returns the CompletedProcess whatever the exit status."""
    exe = require_tool(tool)
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def dcmtk() -> Callable[..., subprocess.CompletedProcess]:
    return run_dcmtk


@pytest.fixture(scope="module")
def phantom_files(ct_data) -> list[bytes]:
    """The 5 mm phantom series as stored files' bytes (DIRFILE left out), for tests that mutate them."""
    return [p.read_bytes() for p in sorted((ct_data / "philips-phantom-5mm").iterdir()) if p.name != "DIRFILE"]


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:``port``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def stop_process(proc: subprocess.Popen | None, grace_s: float = 5.0) -> None:
    """Stop a process a test started, by its PID: SIGTERM, then SIGKILL if it is still there after ``grace_s``."""
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


class StoreSCP:
    """dcmtk storescp on a free loopback port; counts the C-STORE requests it received."""

    def __init__(self, tmp: Path, extra: list[str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tmp / f"scp-{self.port}"
        self.dir.mkdir(exist_ok=True)
        self.log = tmp / f"scp-{self.port}.log"
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StoreSCP":
        fh = open(self.log, "a")
        self.proc = subprocess.Popen([require_tool("storescp"), "-v", "-aet", "DEST", "-od", str(self.dir), *self.extra,
                                      str(self.port)], stdout=fh, stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def stores(self) -> int:
        return self.log.read_text().count("Received Store Request") if self.log.exists() else 0

    def received_sops(self) -> set[str]:
        import pydicom

        return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in self.dir.iterdir()}


REDIS = shutil.which("redis-server") or "/usr/sbin/redis-server"


class RedisServer:
    """A throw-away redis-server on a free loopback port (AOF on, like production), stopped by PID: the
    Celery queue backend's broker in tests/dicomnode/queue/ and the scale-out test."""

    def __init__(self, workdir: Path, port: int) -> None:
        if not Path(REDIS).exists():
            unavailable("redis-server not installed (make test installs it)")
        self.workdir, self.port = Path(workdir), port
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "yes", "--daemonize", "no"],
            stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        import redis

        end = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("redis-server did not start: " + (self.workdir / "redis.log").read_text()[-2000:])
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc, grace_s=10)


# --- a node under test: the fast analysis double, its config, polling, /metrics -----------------------------

FAKE_ANALYZER = textwrap.dedent('''
    """Test double of pipeline.analyze.Analyzer writing real (tiny) DICOM objects with fresh UIDs."""
    import os, time
    from pathlib import Path
    import pydicom
    from pydicom.uid import generate_uid
    from pipeline.result import AnalysisResult, Status

    class FakeAnalyzer:
        def __init__(self, models):
            pass

        def analyze(self, files, out_dir, predecessor=None):
            time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
            out = Path(out_dir)
            src = pydicom.dcmread(sorted(files)[0])
            series = generate_uid()
            for name in ("seg.dcm", "sr.dcm"):
                src.SOPInstanceUID = generate_uid()
                src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
                src.SeriesInstanceUID = series
                src.SeriesDescription = f"fake {name} n={len(files)} pred={predecessor}"[:64]
                src.save_as(out / name)
            (out / "predecessor").write_text(str(predecessor))
            r = AnalysisResult(status=Status.ANALYZED, outputs={"seg": ["seg.dcm"], "sr": ["sr.dcm"]})
            r.write(out)
            return r
''')


@pytest.fixture
def fake_module(tmp_path, monkeypatch) -> Path:
    """A folder on ``sys.path`` (the node's analysis processes inherit it) holding ``fake_node_analyzer``:
    ``FakeAnalyzer``, the test double ``node_config`` configures ($FAKE_SLEEP seconds, then SEG + SR)."""
    d = tmp_path / "mods"
    d.mkdir()
    (d / "fake_node_analyzer.py").write_text(FAKE_ANALYZER)
    monkeypatch.syspath_prepend(str(d))
    return d


def take_ct_series(study_uid, series):
    """A ``decide`` for ``Node``: analyse the study's largest CT series, ignore studies without CT."""
    from dicomnode.select import Decision

    ct = [s for s in series if s.modality == "CT"]
    if not ct:
        return Decision("ignore", reason="no CT")
    return Decision("analyze", series_uid=max(ct, key=lambda s: s.instance_count).series_uid)


def node_config(tmp_path: Path, port: int, dest_port: int, **kw):
    """An in-process node's config: SCP on 127.0.0.1:``port``, the fake analysis (``fake_module``), one DIMSE
    destination ``pacs`` (AE DEST, e.g. a ``StoreSCP``) on ``dest_port``, short quiet/sweep/retry times, no
    metrics port; ``kw`` sets queue options (``max_attempts=2``...)."""
    from dicomnode.config import Destination

    cfg = small_config()
    cfg.node.data_dir = tmp_path / "var"
    cfg.node.host = "127.0.0.1"
    cfg.node.port = port
    cfg.storage.min_free_bytes = 0
    cfg.selection.quiet_seconds = 1
    cfg.scheduler.sweep_seconds = 0.3
    cfg.scheduler.retry_seconds = 0.5
    cfg.queue.backoff_base_s = 0.5
    cfg.queue.backoff_max_s = 1
    cfg.worker.analyzer = "fake_node_analyzer:FakeAnalyzer"
    cfg.metrics.enabled = False  # no fixed port shared between parallel test runs
    cfg.destinations = [Destination(name="pacs", ae_title="DEST", host="127.0.0.1", port=dest_port)]
    for k, v in kw.items():
        setattr(cfg.queue, k, v)
    return cfg


def wait_for(pred: Callable[[], object], timeout: float = 60.0, step: float = 0.2, what: str = "condition"):
    """``pred()``'s first truthy value, polled every ``step`` s; TimeoutError naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"{what} not met within {timeout:.0f} s")


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    """(HTTP status, body) of GET http://127.0.0.1:``port````path`` (a node's /metrics or /healthz)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """A sample's value from the Prometheus text format (labels matched exactly, in any order)."""
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m[1] != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[2] or ""))
        if got == labels:
            return float(m[3])
    return None
