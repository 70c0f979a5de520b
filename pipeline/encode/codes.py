"""Every coded concept the node writes, in one place, so SEG, SR and tests agree on them.

Standard codes (SNOMED CT, LOINC, UCUM, DCM) where they exist; concepts without a standard code use
the private scheme ``99ICHNODE`` (declared in the SR's CodingSchemeIdentificationSequence).
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from pipeline.result import reason_text

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

def cannot_assess_reason(code: str) -> CodedConcept:
    """The coded reason for a ``CannotAssess.code`` (table: ``pipeline.result.REASONS``); unknown codes
    keep their text in the meaning."""
    value, meaning = reason_text(code)
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
