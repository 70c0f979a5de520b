"""Work: the slots that turn queued jobs into results on disk.

- ``process``: ``AnalysisProcess``, a long-lived, warmed child process that loads the models once;
- ``verdicts``: ``LocalVerdicts``, coded "cannot assess" reports in the node's own thread (no model);
- ``slot``: ``Worker``, the thread that claims one kind of job (``queue.Work``) and runs it through either;
- ``loop``: ``SlotLoop``, the round / wait-or-kick / stop thread both the Worker and the Sender run.
"""

from .process import AnalysisFailed, AnalysisProcess, AnalysisStopped, AnalysisTimeout, ModelSource, predecessor_files, with_device
from .slot import Worker, job_dir, predecessor_of
from .verdicts import LocalVerdicts

__all__ = ["AnalysisFailed", "AnalysisProcess", "AnalysisStopped", "AnalysisTimeout", "LocalVerdicts", "ModelSource", "Worker",
           "job_dir", "predecessor_files", "predecessor_of", "with_device"]
