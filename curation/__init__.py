"""crucible's data curation layer: steps over Arrow record batches, Parquet shards in and out.

Never imports torch: a data engineer installs the `curation` extra alone.
"""
