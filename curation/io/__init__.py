"""Parquet shards in and out: discovery, streaming reads with column mapping, atomic writes."""
