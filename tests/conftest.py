"""Shared test configuration: this folder is on sys.path, so test helpers here import by name."""
