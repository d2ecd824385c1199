"""Leaf utilities every stage may use: atomic file writes, process placement and device, progress."""
