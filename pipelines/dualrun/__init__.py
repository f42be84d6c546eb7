"""The dual run against the legacy warehouse: mapping, warehouse, seed, replay and parity."""
