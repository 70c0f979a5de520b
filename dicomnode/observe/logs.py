"""Keep patient data out of the node's logs without changing how libraries validate data.

Why: pydicom reports an invalid element value by quoting it ("Invalid value for VR UI:
'Doe^Jane'"), both as a warning and on its "pydicom" logger, and both end up in the node's log
stream. Switching pydicom's validation off would change the pipeline's and the senders' behaviour
for the whole process; instead the quoted values in pydicom's messages are withheld.
"""

from __future__ import annotations

import logging
import re

WITHHELD = "'<withheld>'"
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")


class _WithholdQuotedValues(logging.Filter):
    """Replaces quoted values in pydicom's messages (its logger, or warnings raised in pydicom)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pydicom") or "pydicom" in str(record.args or record.msg):
            record.msg, record.args = _QUOTED.sub(WITHHELD, record.getMessage()), ()
        return True


_FILTER = _WithholdQuotedValues()


def withhold_values_in_warnings() -> None:
    """Route warnings through logging ("py.warnings"); withhold the values pydicom quotes."""
    logging.captureWarnings(True)
    for name in ("py.warnings", "pydicom"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
