"""The small trainer: stream FRet Parquet shards, train an embedding model, evaluate it on BEIR."""
