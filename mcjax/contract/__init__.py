"""The sample contract, below every layer that writes or reads samples.

``schema``: the fields of a training sample / evaluation record (dtype, shape, role; the roles
say which fields reach the model and which stay on the host). ``history_store``: the saved
per-user history sequences that stored samples point into. The Moment engine (``moment``)
writes both, the sample shards (``samples``) store them, the loader, model, runtime and
scorer read them. ``batch``: the one path from sample rows to device arrays (padding, the
host transform, id folding, the sharded copy). This package imports only
``mcjax.eventlog``.
"""
