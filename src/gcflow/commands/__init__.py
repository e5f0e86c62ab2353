"""Sub-commands of the `gcflow` command line."""
