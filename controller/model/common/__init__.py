"""model.common subpackage."""
