"""The fleet's Redis and Celery side, imported only when a broker URL is set.

- ``lua``: every Lua script, with one shared prelude (key names: ``dispatch.keys``);
- ``redis_bus`` and ``writer``: the job bus on Redis and its pipelined writer;
- ``celery_broker`` and ``transport``: sending jobs through Celery/kombu (Redis, Sentinel or
  RabbitMQ);
- ``redis_clients``: Redis clients for the bus's URL (``redis://`` or ``sentinel://``);
- ``session_store``: sessions kept in Redis.
"""
