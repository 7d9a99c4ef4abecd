"""job_files (galaxy-contract.md §5-6) through a real daemon, split by topic: reads and
confinement (test_job_files_access), writes, the state gate and 1 GiB (test_job_files_upload)."""
