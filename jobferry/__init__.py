"""jobferry: a job runner daemon — jobs in over HTTP, run locally, in Docker or on Slurm."""

__version__ = "0.1.0"
