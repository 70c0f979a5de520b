"""Receive: what a PACS or scanner talks to — PDU limits, the AE and its allow-list, TLS, C-STORE.

Everything a peer sends passes :mod:`.guard` first (lengths checked before anything is allocated),
then pynetdicom (negotiation, release, abort, C-ECHO) or the fast C-STORE reader (:mod:`.fastpath`).
"""
