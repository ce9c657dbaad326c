"""model.diffusion subpackage."""
