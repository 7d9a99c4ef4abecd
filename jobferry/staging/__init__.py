"""Moving bytes in and out of job directories safely.

``confined.py`` opens every client-named path by a descriptor walk that cannot
leave its root (its docstring is the threat model); ``forms.py`` and the
multipart receiver turn request bodies into files; ``uploads.py`` keeps partial
uploads where a restart sweeps them; ``json_body.py`` parses bounded JSON;
``paths.py`` holds pure name checks. Staging imports only ``jobferry.errors``.
"""
