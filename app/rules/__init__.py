"""Reply rules (format: docs/rules.md): load and check a YAML file, then decide per message."""

from .compiler import Outbound, compile_text, load, outbound_settings
from .engine import Decision, Outgoing, RuleSet, Webhook, decide
from .holder import RulesHolder
from .source import Problem, RulesError

__all__ = ["compile_text", "load", "decide", "Decision", "Outgoing", "Outbound", "RuleSet", "RulesHolder",
           "Problem", "RulesError", "Webhook", "outbound_settings"]
