"""Optimisers: Muon, the official Adam + Muon split, and their schedules."""
