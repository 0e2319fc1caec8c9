"""The `selfpose` command: one module per subcommand, each exposing ``register(subparsers)``."""
