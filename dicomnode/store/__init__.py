"""Store: what the node keeps of every acknowledged instance.

- ``journal``: the write-ahead journal (a data set is durable after one write, before the C-STORE answer);
- ``spool``: the instances as files under hashed paths;
- ``index``: the SQLite (WAL) index of patients, studies, series, instances, and the completion queries;
- ``digest``: the digest that makes re-sends idempotent and spool files checkable.
"""

from . import digest
from .index import Index
from .journal import Journal
from .spool import Spool

__all__ = ["Index", "Journal", "Spool", "digest"]
