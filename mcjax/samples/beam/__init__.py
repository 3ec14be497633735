"""The Moment sample engine as an Apache Beam pipeline: the same samples at any scale.

``mcjax.moment.engine`` holds the whole log in one process. This package runs the same
engine functions on a Beam runner (the DirectRunner here; Flink, Spark or Dataflow through
Beam's own flags), keyed as the features need the events: labels per exposure, crowd
features per (live, time range) with counts carried across ranges, histories per user, then a
join per exposure. ``job.run`` writes the same samples folder as the in-process path
(``mcjax.samples.build.build_samples_dir(..., engine="beam")`` is the entry point; see
``stages`` for what each key's worker computes, ``job`` for the graph, ``files`` for reading
and writing, ``transport`` for how batches move between stages).
"""
