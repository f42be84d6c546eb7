"""Stateful fraud detection: per-card features over event-time windows, named rules, an optional model."""
