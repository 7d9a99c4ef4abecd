"""The SQL store: models, engine and session factory, state transitions, migrations.

SQLite embedded, PostgreSQL when several nodes share it; ``transitions.py`` holds a
job's state changes after it is stored, ``records.py`` batches the hot-path
writes, ``notify.py`` carries PostgreSQL NOTIFY wake-ups. The store imports
only ``jobferry.errors``; services are its only callers besides the daemon's
wiring.
"""
