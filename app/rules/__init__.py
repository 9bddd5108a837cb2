"""Reply rules (format: docs/rules.md): load and check a YAML file, then decide per message."""

from .compiler import Sending, compile_text, load, sending_of
from .engine import Decision, Outgoing, RuleSet, Webhook, decide
from .holder import RulesHolder
from .source import Problem, RulesError

__all__ = ["compile_text", "load", "decide", "Decision", "Outgoing", "Sending", "RuleSet", "RulesHolder",
           "Problem", "RulesError", "Webhook", "sending_of"]
