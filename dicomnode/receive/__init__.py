"""Receive: what a PACS or scanner talks to — PDU limits, the AE and its allow-list, TLS, C-STORE.

Everything a peer sends passes :mod:`.guard` first (lengths checked before anything is allocated),
then pynetdicom (negotiation, release, abort, C-ECHO) or the fast C-STORE reader (:mod:`.fastpath`).
:mod:`.server` builds the AE and starts the SCP (``start_scp``); :mod:`.receiver` turns each data set
into a durable, indexed spool file before the answer; :mod:`.filemeta` and :mod:`.reconcile` help it.
``dicomnode.scp`` is the public face and the bare SCP's command line.
"""
