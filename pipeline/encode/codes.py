"""Every coded concept the node writes, in one place, so SEG, SR and tests agree on them.

Standard codes (SNOMED CT, LOINC, UCUM, DCM) where they exist; concepts without a standard code use
the private scheme ``99ICHNODE`` (declared in the SR's CodingSchemeIdentificationSequence).
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

PRIVATE_SCHEME = "99ICHNODE"
PRIVATE_SCHEME_NAME = "ICH expansion node local codes"

# SEG segment
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
HEMORRHAGE = CodedConcept("50960005", "SCT", "Hemorrhage")
BRAIN = CodedConcept("12738006", "SCT", "Brain")
ARTIFICIAL_INTELLIGENCE = CodedConcept("123110", "DCM", "Artificial Intelligence")      # CID 7162
HISTOGRAM_ANALYSIS = CodedConcept("123105", "DCM", "Histogram Analysis")              # CID 7162 (thresholds)

# SR measurements. Units are the ones OHIF prints verbatim after the number (its label is
# "<CodeMeaning>: <value.toFixed(2)> <unit CodeValue>"): "ml", "cm2", "%" read well; "{1}"/"1" do not.
PROCEDURE_CT = CodedConcept("25045-6", "LN", "CT unspecified body region")
VOLUME = CodedConcept("118565006", "SCT", "Volume")
AREA = CodedConcept("42798000", "SCT", "Area")
MILLILITER = CodedConcept("ml", "UCUM", "milliliter")
SQUARE_CENTIMETER = CodedConcept("cm2", "UCUM", "square centimeter")
PERCENT = CodedConcept("%", "UCUM", "percent")
HIGH_RISK = CodedConcept("15508007", "SCT", "High risk")
LOW_RISK = CodedConcept("75976002", "SCT", "Low risk")
EXPANSION_PROBABILITY = CodedConcept("ICH-EXP-PROB", PRIVATE_SCHEME, "Probability of hematoma expansion")
# OHIF 3.13 shows only NUM items of a planar group, so the "ohif" profile names the risk category in
# the probability's concept (its CODE evaluation is there too, for machines).
EXPANSION_PROBABILITY_HIGH = CodedConcept("ICH-EXP-PROB-H", PRIVATE_SCHEME, "Expansion probability (HIGH risk)")
EXPANSION_PROBABILITY_LOW = CodedConcept("ICH-EXP-PROB-L", PRIVATE_SCHEME, "Expansion probability (low risk)")
EXPANSION_RISK = CodedConcept("ICH-EXP-RISK", PRIVATE_SCHEME, "Hematoma expansion risk")
ASSESSMENT = CodedConcept("ICH-ASSESS", PRIVATE_SCHEME, "Hematoma assessment")
NO_HEMATOMA = CodedConcept("ICH-NONE", PRIVATE_SCHEME, "No intracerebral hematoma detected")
CANNOT_ASSESS = CodedConcept("ICH-CA", PRIVATE_SCHEME, "Cannot assess")

# SR document structure
IMAGING_MEASUREMENT_REPORT = CodedConcept("126000", "DCM", "Imaging Measurement Report")   # TID 1500 title
DIAGNOSTIC_IMAGING_REPORT = CodedConcept("18748-4", "LN", "Diagnostic Imaging Report")     # TID 2000 title
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")     # TID 1500 row 12
FINDINGS = CodedConcept("59776-5", "LN", "Findings")                                       # CID 7001
FINDING = CodedConcept("121071", "DCM", "Finding")                                         # CID 7002
PROCEDURE_REPORTED = CodedConcept("121058", "DCM", "Procedure reported")
COMMENT = CodedConcept("121106", "DCM", "Comment")

# Reasons a series cannot be assessed: CannotAssess.code → (CodeValue ≤ 16 chars, meaning).
_REASONS: dict[str, tuple[str, str]] = {
    "no_images": ("CA-NOIMAGES", "No CT images"),
    "not_ct": ("CA-NOTCT", "Not a CT series"),
    "mixed_series": ("CA-MIXSERIES", "Several series mixed"),
    "unsupported_multiframe": ("CA-MULTIFRAME", "Multi-frame CT not supported"),
    "single_slice": ("CA-SINGLESLICE", "Single slice"),
    "missing_geometry": ("CA-NOGEOMETRY", "Missing image geometry"),
    "invalid_geometry": ("CA-BADGEOMETRY", "Image geometry not a number"),
    "no_frame_of_reference": ("CA-NOFOR", "No frame of reference"),
    "mixed_frame_of_reference": ("CA-MIXFOR", "Mixed frames of reference"),
    "mixed_orientation": ("CA-MIXORIENT", "Mixed slice orientations"),
    "invalid_orientation": ("CA-BADORIENT", "Invalid slice orientation"),
    "invalid_pixel_spacing": ("CA-BADSPACING", "Invalid pixel spacing"),
    "mixed_pixel_spacing": ("CA-MIXSPACING", "Mixed pixel spacings"),
    "mixed_matrix_size": ("CA-MIXMATRIX", "Mixed image sizes"),
    "duplicate_slices": ("CA-DUPSLICES", "Duplicate slice positions"),
    "missing_slices": ("CA-MISSINGSLICES", "Missing slices"),
    "undecodable_pixels": ("CA-UNDECODABLE", "Pixel data not decodable"),
    "unsupported_pixels": ("CA-BADPIXELS", "Unsupported pixel data"),
    "no_brain": ("CA-NOBRAIN", "No brain found"),
    # decided by the node's series selection, whose limits are site settings
    "slice_too_thick": ("CA-THICKSLICE", "Slices too thick"),
    "too_few_slices": ("CA-FEWSLICES", "Too few slices"),
    "insufficient_coverage": ("CA-COVERAGE", "Brain not fully covered"),
    "mixed_geometry": ("CA-MIXGEOMETRY", "Mixed slice geometry"),
    "internal_error": ("CA-ERROR", "Analysis failed"),
}


def cannot_assess_reason(code: str) -> CodedConcept:
    """The coded reason for a ``CannotAssess.code``; unknown codes keep their text in the meaning."""
    value, meaning = _REASONS.get(code, ("CA-OTHER", f"Cannot assess: {code}"[:64]))
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


def risk_code(risk: str) -> CodedConcept:
    if risk == "high":
        return HIGH_RISK
    if risk == "low":
        return LOW_RISK
    raise ValueError(f"risk must be 'high' or 'low', got {risk!r}")


def probability_with_risk(risk: str) -> CodedConcept:
    """The probability concept that also names the risk category (the "ohif" profile)."""
    risk_code(risk)
    return EXPANSION_PROBABILITY_HIGH if risk == "high" else EXPANSION_PROBABILITY_LOW


def coding_scheme_identification() -> Dataset:
    """An item for CodingSchemeIdentificationSequence declaring the private scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "ich-node"
    return item
