"""One module per ``ubnas`` subcommand, each with ``add_parser(subparsers)`` and ``run(args)``."""
