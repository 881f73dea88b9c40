"""conveyor's management commands."""
