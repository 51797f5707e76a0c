"""``retina-deploy serve``: the HTTP server over a ``BatchingDetector``, its settings, metrics and request parsing."""
