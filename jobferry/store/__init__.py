"""The SQL store: models, engine and session factory, state transitions, migrations."""
