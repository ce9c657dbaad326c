"""workspace subpackage."""
