"""Fuzz tests: hostile inputs for loaders, model files and protocol messages (bounded budget)."""
