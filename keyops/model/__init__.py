"""The keyops model: keyrings, the master registry, usage documents, names and paths. Pure: no I/O."""
