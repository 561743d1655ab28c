"""Data: sources -> splits -> decode-once cache -> dataset (+ transforms)."""
