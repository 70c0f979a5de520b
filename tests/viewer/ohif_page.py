"""Driving OHIF 3.13 in the browser and reading its state: ``OhifPage`` (used by the viewer tests)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploy.viewer.stack import study_url

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "var" / "test-artifacts" / "viewer"
HOOKS = Path(__file__).with_name("page_hooks.js")
THUMBNAILS = '[data-cy="study-browser-thumbnail"], [data-cy="study-browser-thumbnail-no-image"]'
# OHIF's own noise, not about our objects: the data source logs itself on the first query
BENIGN = ("dataSource=",)
# true when OHIF's cache holds every CT image the loaded segmentations reference
CT_CACHED = """return window.services.segmentationService.getSegmentations().every(g => {
    const ids = (g.representationData.Labelmap || {}).referencedImageIds || [];
    return ids.length && ids.every(id => window.cornerstone.cache.getImage(id));});"""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.25) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


class OhifPage:
    """One test's view of OHIF: open a study, load a series as the radiologist does, read OHIF's state."""

    def __init__(self, driver, base_url: str, artifacts: Path) -> None:
        self.d, self.base, self.artifacts = driver, base_url, artifacts
        self.stats_retriggered = False          # OHIF's statistics needed a second pass (see load_segmentation)
        shutil.rmtree(artifacts, ignore_errors=True)
        artifacts.mkdir(parents=True)

    # -- navigation ---------------------------------------------------------------------------------
    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def open(self, study_uid: str, series: int) -> None:
        """Open the study in OHIF's default "viewer" mode; waits for ``series`` thumbnails and a first image."""
        self.d.get(study_url(self.base, study_uid))
        wait_until(lambda: len(self.thumbnails()) >= series, 60, f"{series} series in OHIF's study browser")
        wait_until(lambda: self.js("const e = window.cornerstone && window.cornerstone.getEnabledElements();"
                                   "return !!(e && e.length && e[0].viewport.getCurrentImageId &&"
                                   " e[0].viewport.getCurrentImageId());"), 60, "first image shown")

    def thumbnails(self) -> dict[str, Any]:
        """Study browser entries by their text's first line (modality) and second (description)."""
        from selenium.webdriver.common.by import By

        return {e.text: e for e in self.d.find_elements(By.CSS_SELECTOR, THUMBNAILS) if e.text}

    def thumbnail(self, modality: str, contains: str = ""):
        for text, el in self.thumbnails().items():
            lines = text.splitlines()
            if lines and lines[0] == modality and contains.lower() in text.lower():
                return el
        raise AssertionError(f"no {modality} series in OHIF's study browser: {list(self.thumbnails())}")

    def load(self, modality: str, contains: str = "", hydrate: bool = True) -> None:
        """Double-click the series (as a radiologist does) and answer OHIF's "load it?" prompt with yes."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        uid = self.display_set(modality, contains)["displaySetInstanceUID"]
        prompt = lambda: self.d.find_elements(By.CSS_SELECTOR, '[data-cy="yes-hydrate-btn"]')  # noqa: E731
        ActionChains(self.d).double_click(self.thumbnail(modality, contains)).perform()
        wait_until(lambda: uid in self.viewport_display_sets() or prompt(), 30, f"{modality} series in the viewport")
        if hydrate:
            try:
                wait_until(prompt, 3, "OHIF's load prompt")[0].click()
            except TimeoutError:
                pass                                # no prompt: nothing to hydrate (e.g. a text SR)
        self.settle()

    def load_segmentation(self, need_stats: bool = True) -> list[dict]:
        """Load the SEG series and return OHIF's segmentations with each segment's statistics.

        OHIF computes the statistics a moment after the labelmap; an empty segment may never get a
        volume, so ``need_stats=False`` waits for them a little and takes what there is."""
        self.load("SEG")
        wait_until(lambda: self.js("return window.services.segmentationService.getSegmentations().length"), 30,
                   "a segmentation in OHIF")
        stats = """return window.services.segmentationService.getSegmentations().every(g =>
            Object.values(g.segments).every(x => x.cachedStats && x.cachedStats.namedStats &&
                                                 x.cachedStats.namedStats.volume));"""
        try:
            wait_until(lambda: self.js(stats), 10 if need_stats else 8, "OHIF's segment statistics")
        except TimeoutError:
            if not need_stats:
                return self._segments()
            # OHIF computes the statistics once, a second after the labelmap lands, from the CT images in
            # its cache; on a slow link some are not there yet, it gets nothing and waits for the next edit
            # (seen in CI). Wait until OHIF has every referenced CT image, then do what an edit does.
            wait_until(lambda: self.js(CT_CACHED), 120, "every CT image the SEG references, in OHIF's cache")
            self.js("""window.services.segmentationService.getSegmentations().forEach(g =>
                window.cornerstoneTools.segmentation.triggerSegmentationEvents
                      .triggerSegmentationDataModified(g.segmentationId));""")
            self.stats_retriggered = True
            wait_until(lambda: self.js(stats), 60, "OHIF's segment statistics (after the CT was cached)")
        return self._segments()

    def _segments(self) -> list[dict]:
        return self.js("""
            return window.services.segmentationService.getSegmentations().map(g => ({id: g.segmentationId,
              label: g.label, segments: Object.values(g.segments).map(x => {
                const st = (x.cachedStats && x.cachedStats.namedStats) || {};
                const nums = Object.values(st).map(v => v.value).filter(v => typeof v === 'number');
                return {index: x.segmentIndex, label: x.label, volume_mm3: st.volume ? st.volume.value : null,
                        all_finite: nums.every(Number.isFinite), n_stats: nums.length};
              })}));""")

    def settle(self) -> None:
        """Give the viewport time to fetch and render (OHIF has no "idle" signal to wait on)."""
        time.sleep(1.5)

    # -- OHIF's state -------------------------------------------------------------------------------
    def display_sets(self) -> list[dict]:
        return self.js("""return window.services.displaySetService.getActiveDisplaySets().map(d => ({
            displaySetInstanceUID: d.displaySetInstanceUID, Modality: d.Modality,
            SeriesDescription: d.SeriesDescription || '', SeriesInstanceUID: d.SeriesInstanceUID,
            isLoaded: !!d.isLoaded, numImages: (d.images || d.instances || []).length}))""")

    def display_set(self, modality: str, contains: str = "") -> dict:
        found = [d for d in self.display_sets()
                 if d["Modality"] == modality and contains.lower() in d["SeriesDescription"].lower()]
        assert found, f"OHIF has no {modality} display set: {self.display_sets()}"
        return found[0]

    def viewport_display_sets(self) -> list[str]:
        return self.js("""const vs = window.services.viewportGridService.getState().viewports;
            return [...(vs instanceof Map ? vs.values() : Object.values(vs))].flatMap(v => v.displaySetInstanceUIDs || []);""")

    def current_sop(self) -> str:
        image_id = self.js("return window.cornerstone.getEnabledElements()[0].viewport.getCurrentImageId();")
        return sop_of(image_id)

    def record(self) -> dict:
        return self.js("return window.__ich || {console: [], notifications: []};")

    def problems(self, pattern: str = "") -> list[str]:
        """Console errors (any), warnings matching ``pattern`` and error/warning pop-ups, as text."""
        rec = self.record()
        out = []
        for entry in rec["console"]:
            if any(b in entry["text"] for b in BENIGN):
                continue
            if entry["level"] != "warn" or (pattern and re.search(pattern, entry["text"], re.I)):
                out.append(f"console {entry['level']}: {entry['text'][:500]}")
        for n in rec["notifications"]:
            if n["type"] in ("error", "warning"):
                out.append(f"pop-up {n['type']}: {n['title']} | {n['message'][:300]}")
        return out

    def svg_text(self) -> str:
        """Text drawn on the images (cornerstone's SVG annotation layer)."""
        return self.js("return [...document.querySelectorAll('svg text')].map(t => { const l = t.querySelectorAll('tspan');"
                       " return l.length ? [...l].map(x => x.textContent).join('\\n') : t.textContent; }).join('\\n');")

    def page_text(self) -> str:
        return self.js("return document.body.innerText;") + "\n" + self.svg_text()

    # -- artifacts ----------------------------------------------------------------------------------
    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.d.save_screenshot(str(path))
        return path

    def screenshot_array(self) -> np.ndarray:
        from PIL import Image

        png = base64.b64decode(self.d.get_screenshot_as_base64())
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)

    def save_record(self) -> None:
        try:
            rec = self.record()
            rec["browser_log"] = self.d.get_log("browser")
        except Exception as exc:  # the page may be gone; the record is a by-product
            rec = {"error": repr(exc)}
        rec["stats_retriggered"] = self.stats_retriggered
        (self.artifacts / "page-record.json").write_text(json.dumps(rec, indent=1, default=str))


def sop_of(image_id: str) -> str:
    """SOP Instance UID of a WADO-RS image id (…/instances/<uid>/frames/1)."""
    return image_id.split("/instances/")[1].split("/")[0]
