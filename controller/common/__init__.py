"""common subpackage."""
