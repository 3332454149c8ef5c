"""`mobileclip2 reinforce`: the command's flags and run live with the feature, in
:mod:`mobileclip2.reinforce.main` (``python -m mobileclip2.reinforce`` runs the same)."""

from mobileclip2.reinforce.main import HELP, add_arguments, run

__all__ = ["HELP", "add_arguments", "run"]
