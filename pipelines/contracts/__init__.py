"""The data contract: Avro codec, columnar reader and writer, schema registry, table/topic specs, reference data."""
