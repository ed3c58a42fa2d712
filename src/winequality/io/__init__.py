"""How wine measurements arrive and leave: one reading path for files and request bodies.

- `files`: media types, bytes from disk, the CSV layout, atomic writes;
- `protocol`: MLflow's JSON scoring protocol (and the JSON layouts files may hold);
- `inference`: the Open Inference Protocol's (V2) inference requests, decoded and checked;
- `bulk`: large bodies of numbers only, read straight into arrays (simdjson) for both;
- `reader`: the reader: CSV (Arrow's streaming reader), Parquet (row groups) and JSON, from a
  file or from bytes, in validated batches; a type retry stays inside it;
- `writers`: CSV, Parquet and JSON written batch by batch onto a temporary file, renamed when
  whole.

Knows nothing about models or HTTP.
"""
