"""Entry points for `ray job submit`: thin wrappers over `realfill run` and `realfill eval`."""
