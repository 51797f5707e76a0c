"""The one timer: ``measure`` a Detector at a batch size, statistics, the report's schema, FLOPs, the device's peak,
the environment.
"""
