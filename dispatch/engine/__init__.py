"""The job engine: runs JobSpecs against a job bus. Embedded mode and workers both run it.

- ``bus``: the job bus protocol (job metadata, events, traces);
  ``memory_bus`` is the in-process bus;
- ``run``: ``JobRun``, one job from claim to result;
- ``host``: ``JobHost``, many jobs on one event loop;
- ``loop``: a private event loop in a daemon thread;
- ``ceiling``: the most permissive permission profile a worker agrees to run.
"""
