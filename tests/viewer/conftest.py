"""The real viewer, driven as a radiologist would: Orthanc + DICOMweb, OHIF's dist/, headless Chromium.

Fixtures (session scope; one stack for the whole package):

- ``viewer_samples``: the three sample studies of ``deploy.viewer.samples`` analysed by the pipeline
  (hematoma, negative, cannot-assess), ≈ 70 s on 2 cores.
- ``viewer_stack``: Orthanc with the DICOMweb plugin holding them + OHIF behind one loopback origin.
- ``chromium``: headless Chromium via selenium and the Debian chromedriver (nothing is downloaded);
  ``ohif_page(view)``: an ``ohif_page.OhifPage`` on it.

Missing tools skip the tests on a developer's machine but FAIL them under CI (``CI`` set): CI must
never be green because the viewer was not there. ``make test`` installs them all.
Screenshots and each test's page record go to ``var/test-artifacts/viewer/``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:          # deploy/ is not an installed package
    sys.path.insert(0, str(REPO))

from deploy.viewer import samples as sample_studies  # noqa: E402
from deploy.viewer.stack import MissingTool, Orthanc, ViewerServer, dicomweb_plugin, ohif_dist  # noqa: E402
from ohif_page import ARTIFACTS, HOOKS, OhifPage  # noqa: E402
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = "/usr/bin/chromedriver"


def missing(what: str) -> None:
    """Skip on a developer's machine, fail under CI: a viewer test that did not run is not a pass."""
    message = f"{what} (make test installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


def _check_tools() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium (pip extra [test])")
    try:
        dicomweb_plugin()
        ohif_dist()
    except MissingTool as exc:
        missing(str(exc))
    browser = next((b for b in CHROMIUM if Path(b).is_file()), None)
    if browser is None:
        missing("chromium (Debian package chromium)")
    driver = shutil.which("chromedriver") or (CHROMEDRIVER if Path(CHROMEDRIVER).is_file() else None)
    if driver is None:
        missing("chromedriver (Debian package chromium-driver)")
    return browser, driver


@pytest.fixture(scope="session")
def viewer_tools() -> tuple[str, str]:
    """(chromium, chromedriver) paths, after checking every piece of the stack is installed."""
    return _check_tools()


@pytest.fixture(scope="session")
def viewer_samples(viewer_tools, tmp_path_factory) -> dict[str, sample_studies.Sample]:
    if sample_studies.ct_data_dir() is None:
        missing("real CT data (../shared/data/ct)")
    t0 = time.monotonic()
    out = sample_studies.prepare(tmp_path_factory.mktemp("viewer-samples"), progress=lambda *_: None)
    print(f"\nviewer samples analysed in {time.monotonic() - t0:.0f} s")
    return out


class Stack:
    def __init__(self, orthanc: Orthanc, server: ViewerServer, samples: dict[str, sample_studies.Sample]) -> None:
        self.orthanc, self.server, self.samples = orthanc, server, samples

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def viewer_stack(viewer_samples, tmp_path_factory):
    orthanc = Orthanc(tmp_path_factory.mktemp("viewer-orthanc")).start()
    server = None
    try:
        sample_studies.upload(orthanc, viewer_samples)
        server = ViewerServer(ohif_dist(), orthanc.http_port).start()
        yield Stack(orthanc, server, viewer_samples)
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()


@pytest.fixture(scope="session")
def chromium(viewer_tools):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = viewer_tools
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
                "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
                "--disable-background-networking", "--disable-component-update", "--lang=en-US"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HOOKS.read_text()})
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="session")
def ohif_page(chromium, viewer_stack) -> Callable[[str], OhifPage]:
    """``ohif_page("view-name")``: a page object whose artifacts go to var/test-artifacts/viewer/view-name/."""
    return lambda view: OhifPage(chromium, viewer_stack.url, ARTIFACTS / view)
