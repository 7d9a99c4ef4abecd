"""Files on their way in and out: request bodies, confined paths, the upload area.

``confined`` is the one confinement module (every client-named path inside a
job's directory is read, located or written through its descriptor walk);
``forms`` the one streaming receiver of request bodies (python-multipart);
``json_body`` bounded JSON parsing; ``uploads`` the daemon's staging area and
its start-up sweep; ``paths`` pure name helpers that open nothing a client
named. This package imports only ``jobferry.errors`` (and its own modules):
services and handlers use it, never the other way round.
"""
