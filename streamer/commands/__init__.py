"""One module per ``coldstream`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args)``."""
