"""The service layer: every rule about users, scripts, jobs, job files, callbacks and
nodes, with no face and no daemon in sight.

Services take face-neutral arguments and return face-neutral records; blocking
work runs in the worker pool through ``Core.call``. ``container.build`` is the
composition root that wires them once per process; what a service needs from the
daemon (starting a job at once, waking the scheduler) it receives through its
constructor as a narrow protocol. Services may import the store, the runners'
interface, staging, argspec, config and errors — never ``api``, ``cli`` or
``daemon``.
"""
