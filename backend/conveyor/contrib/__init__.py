"""Optional Django apps built on conveyor; none is installed unless listed in INSTALLED_APPS."""
