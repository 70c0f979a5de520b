"""Issue 14: what a radiologist sees of the node's results in OHIF 3.13 (default "viewer" mode).

Orthanc + DICOMweb + OHIF's dist/ on loopback, headless Chromium (fixtures in conftest.py). Each study
is opened and its series loaded once per view (a module fixture that records what OHIF shows and
never raises); the tests assert on that record, so one page load serves several criteria. Everything
asserted comes from OHIF's own state (window.services, cornerstone) and the page (text, pixels).
Screenshots: var/test-artifacts/viewer/<view>/.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from ohif_page import OhifPage, sop_of, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]



# ----------------------------------------------------------------------------------------- helpers


def seg_masks(seg_path: Path) -> dict[str, np.ndarray]:
    """The node's SEG as {CT SOPInstanceUID: bool mask} (all segments together), read with pydicom."""
    seg = pydicom.dcmread(seg_path)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    out: dict[str, np.ndarray] = {}
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        sop = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[sop] = out.get(sop, np.zeros(frames.shape[1:], bool)) | (frames[i] > 0)
    return out


def cielab_to_rgb(dicom_lab) -> tuple[int, int, int]:
    """DICOM CIELab (0…65535 scaled, D65) → sRGB 0…255, as OHIF (dcmjs) converts it."""
    lab = np.array([float(v) for v in dicom_lab])
    L, a, b = lab[0] * 100 / 65535, lab[1] * 255 / 65535 - 128, lab[2] * 255 / 65535 - 128
    fy = (L + 16) / 116
    f = np.array([fy + a / 500, fy, fy - b / 200])
    xyz = np.where(f ** 3 > 0.008856, f ** 3, (f - 16 / 116) / 7.787) * np.array([0.950456, 1.0, 1.088754])
    m = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                  [0.0556434, -0.2040259, 1.0572252]])
    rgb = m @ xyz
    rgb = np.where(rgb > 0.0031308, 1.055 * np.abs(rgb) ** (1 / 2.4) - 0.055, 12.92 * rgb)
    return tuple(int(round(v)) for v in np.clip(rgb, 0, 1) * 255)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def key_sop(masks: dict[str, np.ndarray]) -> str:
    return max(masks, key=lambda sop: int(masks[sop].sum()))


def numbers_before(unit_regex: str, text: str) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"(\d+(?:\.\d+)?)\s*" + unit_regex, text)]


def _result_modalities(sample) -> set[str]:
    kinds = {"seg": "SEG", "sr": "SR", "sc": "OT"}  # what an "ohif" destination receives (no sr_tid1411)
    return {"CT"} | {kinds[k] for k, v in sample.result["outputs"].items() if v and k in kinds}


def _view(ohif_page, viewer_stack, sample: str, view: str, scenario) -> dict:
    """Run one browser scenario on a sample study; keep what it saw, and its error as text (never raise:
    an expected failure must show in the test that expects it, not as a fixture error)."""
    page, facts = ohif_page(view), {"error": None}
    try:
        scenario(page, viewer_stack.samples[sample], facts)
    except Exception:  # noqa: BLE001 — recorded; the tests say what was expected
        facts["error"] = traceback.format_exc(limit=4)
    page.save_record()
    return facts


# ----------------------------------------------------------------------------------- the observations


def _seg_scenario(p: OhifPage, s, f: dict) -> None:
    """Open the hematoma study, load the SEG (answering OHIF's prompt), look at the key slice."""
    p.open(s.study_uid, series=len(_result_modalities(s)))
    f["display_sets"] = p.display_sets()
    f["opened_problems"] = p.problems()
    p.screenshot("1-study-opened")
    f["segmentations"] = p.load_segmentation()
    f["colors"] = p.js("""
        return window.services.segmentationService.getSegmentationRepresentations('default').flatMap(r =>
          Object.values(r.segments).map(x => ({index: x.segmentIndex, color: x.color.slice(0, 3)})));""")
    # OHIF's labelmap, per referenced CT image: the non-zero pixel indices
    f["labelmaps"] = p.js("""
        const g = window.services.segmentationService.getSegmentations()[0].representationData.Labelmap;
        const out = {};
        g.imageIds.forEach((id, i) => {
          const img = window.cornerstone.cache.getImage(id);
          const px = img.getPixelData(); const nz = [];
          for (let k = 0; k < px.length; k++) if (px[k]) nz.push(k);
          out[g.referencedImageIds[i]] = {rows: img.rows, columns: img.columns, nonzero: nz};
        });
        return out;""")
    f["seg_problems"] = p.problems("seg|segment|labelmap|CIELab")
    f["key_sop"] = key_sop(seg_masks(s.files("seg")[0]))
    _show_sop(p, f["key_sop"])
    f["visible"] = p.screenshot_array()
    p.screenshot("2-seg-overlay-key-slice")
    visibility = "window.services.segmentationService.setSegmentVisibility('default', arguments[0], 1, arguments[1]);"
    seg_id = f["segmentations"][0]["id"]
    p.js(visibility + "window.cornerstone.getEnabledElements()[0].viewport.render();", seg_id, False)
    p.settle()
    f["hidden"] = p.screenshot_array()
    f["geometry"] = _geometry(p)
    p.js(visibility, seg_id, True)


@pytest.fixture(scope="module")
def hematoma_seg(ohif_page, viewer_stack):
    return _view(ohif_page, viewer_stack, "hematoma", "hematoma-seg", _seg_scenario)


def _show_sop(p: OhifPage, sop: str) -> None:
    p.js("""const vp = window.cornerstone.getEnabledElements()[0].viewport;
            const i = vp.getImageIds().findIndex(id => id.includes('/instances/' + arguments[0] + '/'));
            vp.setImageIdIndex(i);""", sop)
    wait_until(lambda: p.current_sop() == sop, 20, "the key slice shown")
    p.settle()


def _geometry(p: OhifPage) -> dict:
    """Where image pixel (x, y) lands in the screenshot: origin and the two pixel steps, CSS pixels."""
    return p.js("""
        const vp = window.cornerstone.getEnabledElements()[0].viewport;
        const id = vp.getCurrentImageId();
        const at = (x, y) => vp.worldToCanvas(window.cornerstone.utilities.imageToWorldCoords(id, [x, y]));
        const r = vp.canvas.getBoundingClientRect();
        return {o: at(0, 0), ex: at(1, 0), ey: at(0, 1), rect: [r.left, r.top, r.width, r.height],
                dpr: window.devicePixelRatio};""")


def _open_and_load_sr(p: OhifPage, sample, f: dict, view: str) -> None:
    p.open(sample.study_uid, series=len(_result_modalities(sample)))
    p.load("SR")
    f["sr_display_sets"] = p.js("""
        return window.services.displaySetService.getActiveDisplaySets().filter(d => d.Modality === 'SR').map(d => ({
          uid: d.displaySetInstanceUID, isLoaded: !!d.isLoaded,
          measurements: (d.measurements || []).map(m => ({
            sop: m.ReferencedSOPInstanceUID, trackingId: m.TrackingIdentifier, graphicType: m.graphicType,
            labels: (m.labels || []).map(l => `${l.label}: ${l.value}`),
            points: (m.coords || []).map(c => c.GraphicData || [])})),
          texts: (function collect(items, acc) {
            (items || []).forEach(i => { if (i.TextValue) acc.push(i.TextValue);
              if (i.ConceptCodeSequence) { const c = [].concat(i.ConceptCodeSequence)[0]; if (c) acc.push(c.CodeMeaning); }
              collect(i.ContentSequence && [].concat(i.ContentSequence), acc); });
            return acc; })([].concat(d.instance ? d.instance.ContentSequence || [] : []), [])}));""")
    f["viewport"] = p.viewport_display_sets()
    f["current_sop"] = p.current_sop() if p.js(
        "const e = window.cornerstone.getEnabledElements(); return e.length > 0 && !!e[0].viewport.getCurrentImageId"
        " && !!e[0].viewport.getCurrentImageId();") else None
    try:  # software rendering: the measurement text or the text report appears some seconds after loading;
        # wait for the volume drawn on the image itself (the side panel's "hematoma" came first once, under
        # load, and the SVG layer was still empty when it was read)
        wait_until(lambda: re.search(r"\d\s*m[lL]\b", p.svg_text()) or re.search(r"cannot assess|no (intracerebral )?hematoma",
                                                                                   p.page_text(), re.I),
                   45, "SR text on the page")
    except TimeoutError:
        pass  # recorded as what the page shows; the tests say what was expected
    f["svg_text"] = p.svg_text()
    f["page_text"] = p.page_text()
    f["problems"] = p.problems("SR|structured|measurement|ReferencedSOP")
    p.screenshot(view)


@pytest.fixture(scope="module")
def hematoma_sr(ohif_page, viewer_stack):
    return _view(ohif_page, viewer_stack, "hematoma", "hematoma-sr", lambda p, s, f: _open_and_load_sr(p, s, f, "sr-key-slice"))


def _sc_scenario(p: OhifPage, s, f: dict) -> None:
    p.open(s.study_uid, series=len(_result_modalities(s)))
    p.load("OT", hydrate=False)
    f["current_sop"] = p.current_sop()
    f["problems"] = p.problems()
    p.screenshot("overlay-sc")


@pytest.fixture(scope="module")
def hematoma_sc(ohif_page, viewer_stack):
    return _view(ohif_page, viewer_stack, "hematoma", "hematoma-overlay-sc", _sc_scenario)


def _negative_scenario(p: OhifPage, s, f: dict) -> None:
    _open_and_load_sr(p, s, f, "negative-sr")
    f["segments"] = []
    if any(d["Modality"] == "SEG" for d in p.display_sets()):
        f["segments"] = [x for g in p.load_segmentation(need_stats=False) for x in g["segments"]]
        p.screenshot("negative-seg")


@pytest.fixture(scope="module")
def negative(ohif_page, viewer_stack):
    return _view(ohif_page, viewer_stack, "negative", "negative", _negative_scenario)


@pytest.fixture(scope="module")
def cannot_assess(ohif_page, viewer_stack):
    return _view(ohif_page, viewer_stack, "cannot_assess", "cannot-assess",
                 lambda p, s, f: _open_and_load_sr(p, s, f, "cannot-assess-sr"))


def _ok(facts: dict) -> None:
    assert facts["error"] is None, facts["error"]


# ------------------------------------------------------------------------------------------ the tests


def test_hematoma_study_lists_ct_seg_sr_and_overlay(hematoma_seg, viewer_stack):
    _ok(hematoma_seg)
    s = viewer_stack.samples["hematoma"]
    assert s.result["status"] == "analyzed" and s.result["volume_ml"] > 5
    assert {d["Modality"] for d in hematoma_seg["display_sets"]} >= {"CT", "SEG", "SR", "OT"}
    assert hematoma_seg["opened_problems"] == []


def test_seg_overlay_sits_exactly_on_the_hematoma(hematoma_seg, viewer_stack):
    """OHIF's labelmap equals the node's mask image by image, its volume equals the SR's, and the
    overlay's pixels on the page are where the mask is (segment shown vs hidden, on the key slice)."""
    _ok(hematoma_seg)
    s = viewer_stack.samples["hematoma"]
    errors = [p for p in hematoma_seg["seg_problems"] if not p.startswith("pop-up warning")]
    assert errors == []
    (seg,) = hematoma_seg["segmentations"]
    (segment,) = seg["segments"]
    assert "hematoma" in segment["label"].lower()
    assert segment["all_finite"]
    assert segment["volume_mm3"] / 1000 == pytest.approx(s.result["volume_ml"], rel=2e-3)

    masks = seg_masks(s.files("seg")[0])
    labelmaps = {sop_of(k): v for k, v in hematoma_seg["labelmaps"].items()}
    assert set(labelmaps) == set(masks)
    for sop, lm in labelmaps.items():
        shown = np.zeros(lm["rows"] * lm["columns"], bool)
        shown[lm["nonzero"]] = True
        assert np.array_equal(shown.reshape(lm["rows"], lm["columns"]), masks[sop]), sop
    # … and the node's mask is the hematoma that was drawn into the study
    truth = np.stack([s.truth[sop] for sop in masks])
    assert dice(np.stack(list(masks.values())), truth) > 0.8

    key = hematoma_seg["key_sop"]
    changed, inside, ring = _overlay_pixels(hematoma_seg, masks[key])
    assert changed.sum() > 200, "the overlay changes no pixels on the key slice"
    assert (changed & ~ring).sum() / changed.sum() < 0.02, "overlay pixels away from the hematoma"
    assert (changed & inside).sum() / inside.sum() > 0.95, "hematoma pixels without overlay"


def _overlay_pixels(facts: dict, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Screenshot pixels the overlay changed; those on the mask's interior; those within 2 px of the mask."""
    g = facts["geometry"]
    left, top, width, height = (int(round(v)) for v in g["rect"])
    diff = np.abs(facts["visible"] - facts["hidden"]).sum(axis=-1)[top:top + height, left:left + width] > 40
    o, ex, ey = (np.array(g[k], float) for k in ("o", "ex", "ey"))
    inv = np.linalg.inv(np.stack([ex - o, ey - o], axis=1))
    cy, cx = np.mgrid[0:height, 0:width] + 0.5
    xy = np.einsum("ij,hwj->hwi", inv, np.stack([cx, cy], -1) - o)
    col, row = np.floor(xy[..., 0]).astype(int), np.floor(xy[..., 1]).astype(int)
    valid = (col >= 0) & (row >= 0) & (col < mask.shape[1]) & (row < mask.shape[0])
    col, row = np.clip(col, 0, mask.shape[1] - 1), np.clip(row, 0, mask.shape[0] - 1)
    interior = ndimage.binary_erosion(mask, iterations=2)
    near = ndimage.binary_dilation(mask, iterations=2)
    return diff, valid & interior[row, col], valid & near[row, col]


def test_seg_loads_in_its_own_colour_without_warning(hematoma_seg, viewer_stack):
    _ok(hematoma_seg)
    assert hematoma_seg["seg_problems"] == []
    seg = pydicom.dcmread(viewer_stack.samples["hematoma"].files("seg")[0], stop_before_pixels=True)
    lab = seg.SegmentSequence[0].get("RecommendedDisplayCIELabValue")
    assert lab is not None, "the SEG defines no display colour"
    (shown,) = hematoma_seg["colors"]
    assert np.abs(np.array(shown["color"]) - cielab_to_rgb(lab)).max() <= 3, (shown, cielab_to_rgb(lab))


def test_sr_opens_on_the_key_slice_with_outline_volume_probability_and_risk(hematoma_sr, viewer_stack):
    _ok(hematoma_sr)
    s = viewer_stack.samples["hematoma"]
    assert hematoma_sr["problems"] == []
    (sr,) = [d for d in hematoma_sr["sr_display_sets"] if d["measurements"]] or [None]
    assert sr is not None, hematoma_sr["sr_display_sets"]
    assert sr["uid"] in hematoma_sr["viewport"]

    masks = seg_masks(s.files("seg")[0])
    largest = max(int(m.sum()) for m in masks.values())
    on_image = [m for m in sr["measurements"] if m["sop"]]
    assert on_image, "no measurement placed on an image"
    key = on_image[0]["sop"]
    assert hematoma_sr["current_sop"] == key, "OHIF did not open the SR on its key slice"
    assert masks[key].sum() >= 0.8 * largest, "the SR's slice is not a key slice of the hematoma"

    # the outline: a closed polygon around the hematoma's pixels on that slice
    pts = np.array(on_image[0]["points"][0], float).reshape(-1, 2)          # (column, row) image coordinates
    assert len(pts) >= 4
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    assert area == pytest.approx(masks[key].sum(), rel=0.25)
    cx, cy = int(x.mean()), int(y.mean())
    assert ndimage.binary_dilation(masks[key], iterations=2)[cy, cx], "outline centre outside the hematoma"

    text = hematoma_sr["svg_text"]
    assert "{1}" not in text and not re.search(r"(?<![\d.])\s+cm3", text), text
    volumes = numbers_before(r"m[lL]\b", text)
    assert any(v == pytest.approx(s.result["volume_ml"], abs=0.05) for v in volumes), text
    p = s.result["expansion_probability"]
    as_percent = numbers_before("%", text)
    plain = [float(v) for v in re.findall(r"\b0\.\d+\b", text)]
    assert any(v == pytest.approx(100 * p, abs=0.5) for v in as_percent) or \
        any(v == pytest.approx(p, abs=0.005) for v in plain), text
    assert re.search(rf"\b{s.result['risk']}\b", text, re.I), f"risk {s.result['risk']!r} not shown: {text}"


def test_sr_model_versions_and_research_disclaimer_are_reachable(hematoma_sr, viewer_stack):
    from pipeline.models import ModelMetadata, ModelPaths

    _ok(hematoma_sr)
    texts = "\n".join(t for d in hematoma_sr["sr_display_sets"] for t in d["texts"]) + hematoma_sr["page_text"]
    assert re.search(r"research use", texts, re.I)
    for kind, path in vars(ModelPaths.bundled()).items():
        if path is not None:
            meta = ModelMetadata.read(path)
            assert f"{meta.name} v{meta.version}" in texts, f"{kind} model not named in the SR as OHIF shows it"


def test_overlay_sc_displays(hematoma_sc, viewer_stack):
    _ok(hematoma_sc)
    sc_sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
               for f in viewer_stack.samples["hematoma"].files("sc")}
    assert hematoma_sc["current_sop"] in sc_sops
    assert hematoma_sc["problems"] == []


def test_negative_study_has_no_empty_segment(negative, viewer_stack):
    _ok(negative)
    assert viewer_stack.samples["negative"].result["volume_ml"] == 0
    assert all(seg["all_finite"] and seg["volume_mm3"] for seg in negative["segments"]), negative["segments"]


def test_negative_study_sr_says_no_hematoma_detected(negative):
    _ok(negative)
    assert negative["problems"] == []
    assert re.search(r"no (intracerebral )?hematoma", negative["page_text"], re.I), negative["page_text"][-2000:]


def test_cannot_assess_study_shows_the_reason(cannot_assess, viewer_stack):
    _ok(cannot_assess)
    s = viewer_stack.samples["cannot_assess"]
    assert s.result["status"] == "cannot_assess" and s.result["reason"].startswith("missing_slices")
    assert cannot_assess["problems"] == []
    assert re.search(r"cannot assess", cannot_assess["page_text"], re.I)
    assert re.search(r"missing slices", cannot_assess["page_text"], re.I), cannot_assess["page_text"][-2000:]


def test_series_descriptions_lead_with_what_the_radiologist_scans_for(hematoma_seg):
    _ok(hematoma_seg)
    lead = {"SEG": "ICH SEG", "SR": "ICH report", "OT": "ICH overlay"}
    for d in hematoma_seg["display_sets"]:
        if d["Modality"] in lead:
            assert d["SeriesDescription"][:20].startswith(lead[d["Modality"]]), d["SeriesDescription"]
