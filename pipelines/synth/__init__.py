"""Synthetic card transactions: the generator model and malformed kinds."""
