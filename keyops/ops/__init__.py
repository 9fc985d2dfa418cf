"""The operations layer: the ``Keyops`` front and the jobs every face (CLI, modules, servers) calls."""
