"""Imported first by the server that study workers are forked from (multiprocessing's
``forkserver``, :func:`latentseg.study.local_workers.worker_context`): when the launch stops it,
the server ends without unloading the torch, MLflow and matplotlib it preloaded (1-2 CPU
seconds, :mod:`latentseg.exiting`). Its workers end through ``os._exit`` as before, and nobody
reads the server's own exit status."""

from latentseg.exiting import end_quickly

end_quickly(0)
