"""``retina-deploy demo``: the whole pipeline on synthetic data, its stages and its report."""
