"""One module per `mobileclip2` subcommand (see mobileclip2.cli)."""
