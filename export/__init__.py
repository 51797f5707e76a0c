"""retina_deploy.export (lands with its issue)."""
