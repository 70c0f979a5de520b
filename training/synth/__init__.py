"""Synthetic non-contrast head-CT cohort with intracerebral hematoma and its expansion.

Public entry points:
- ``generate_case(seed_or_rng, options) -> SynthCase``: one case in memory (no files).
- ``write_cohort(out_dir, n_cases, seed, options)``: DICOM studies + masks + manifest.csv + cohort.json.
- ``SynthOptions``: every knob, validated; defaults follow issue 4.
"""

from .case import SynthCase, SynthSeries, case_seed, generate_case
from .cohort import GENERATOR_VERSION, MANIFEST_COLUMNS, cohort_statistics, summarize, write_cohort
from .growth import is_expansion
from .options import MARKERS, OptionsError, SynthOptions

__all__ = [
    "GENERATOR_VERSION", "MANIFEST_COLUMNS", "MARKERS", "OptionsError", "SynthCase", "SynthOptions", "SynthSeries",
    "case_seed", "cohort_statistics", "generate_case", "is_expansion", "summarize", "write_cohort",
]
