"""retina_deploy.calib (lands with its issue)."""
