"""Engines that map the pure batch function (backend.activations) over a corpus.

The local engine is backend.jobs.embed_corpus (threads in this process). `ray_engine` maps the same
function with Ray Data actors across a machine or a cluster and hands the workspace Parquet shards.
Both calibrate the workspace's presence scales the same way (`calibration`)."""
