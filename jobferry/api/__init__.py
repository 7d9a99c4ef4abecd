"""The HTTP faces: thin Tornado handlers that translate between a wire format and
the service layer.

Each face lives in its own package and owns its JSON shapes and status names
(``api/wooey/``, ``api/galaxy/``); what every face shares — the handler base with
the one error-to-HTTP table (``base.py``), downloads with ranges, streaming
uploads, the callback and node routes, the OpenAPI document — sits beside them.
Handlers call services (``jobferry.services``) and the upload/download helpers of
``jobferry.staging``; they never import the store or the daemon.
"""
