"""Which series of a study is analysed, and when the study is complete enough to start.

``series`` judges one series from its headers, ``study`` chooses among a study's series,
``completion`` is the sweep that turns ready studies into queue jobs.
"""

from .completion import Decision, Sweeper, study_key
from .series import SeriesAssessment, Verdict, assess_series
from .study import SelectionDecision, choose, select_study

__all__ = ["Decision", "SelectionDecision", "SeriesAssessment", "Sweeper", "Verdict", "assess_series", "choose",
           "select_study", "study_key"]
