"""What every benchmark in ``bench/`` shares, so that each one reads as its measurements.

* ``report``  -- the log line, number formatting, tables, the results JSON
  (machine, git state), the temporary workspace and Ctrl-C/SIGTERM handling.
* ``stats``   -- the run's deadline, percentiles, and the machine's load: busy
  cores, our own CPU, *other work* during a measurement, peak RSS sampling.
* ``daemons`` -- processes this benchmark starts (``Managed``: stopped by pid,
  never by name), ``jobferry serve`` on a temporary data dir (``Daemon``) and
  small reference servers that print their port (``ScriptServer``).
* ``clients`` -- the keep-alive HTTP/1.1 load generator (``HttpConn``,
  ``run_pool``), Wooey submissions and status polls, waiting for a batch of
  jobs with little load on the daemon, the store's timestamps of jobs.

Standard library, ``requests`` and ``psutil`` only; nothing here imports
``jobferry`` (the daemons run it in their own processes).
"""
