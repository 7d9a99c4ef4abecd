"""The daemon: the one place where everything is wired together and kept running.

``server.py`` builds the process (store, runners, services through the composition
root, the HTTP server) and supervises its background tasks; ``scheduler.py``
claims queued jobs and follows them to their end, ``dispatch.py`` starts a
submission's job at once on an idle node, ``recovery.py`` re-attaches or requeues
what a previous run left, ``heartbeat.py`` keeps this node's row alive,
``endings.py`` records job ends with retries, ``connections.py`` guards the
transport. The daemon may import every other package; nothing imports it except
the CLI's ``serve`` command.
"""
