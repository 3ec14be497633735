"""The sample contract, below every layer that writes or reads samples.

``schema``: the fields of a training sample / evaluation record (dtype, shape, role; the roles
say which fields reach the model and which stay on the host). ``history_store``: the saved
per-user history sequences that stored samples point into. ``batch``: the one path from
sample rows to device arrays (padding, the host transform, id folding, the sharded copy). The Moment engine (``moment``)
writes both, the sample shards (``samples``) store them, the pipeline, model, train step and
scorer read them; this package imports only ``mcjax.eventlog``.
"""
