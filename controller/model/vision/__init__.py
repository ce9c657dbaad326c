"""model.vision subpackage."""
