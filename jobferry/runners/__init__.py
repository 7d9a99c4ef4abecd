"""Runners: how a job becomes a process, a container or a Slurm job, and how its end
is learnt.

``base.py`` states the contract every runner keeps (``Runner``, ``RunSpec``,
``RunHandle``, ``RunStatus``); ``local``, ``docker`` and ``slurm`` implement it,
``fake`` is the in-memory one for tests, ``registry`` builds the configured ones.
Runners import only ``jobferry.errors`` and each other (the registry also reads
``jobferry.config``): they know nothing of the store, the services or HTTP.
"""
