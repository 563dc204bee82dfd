"""Every rule class by name (`RULE_CLASSES`) and `build_rule`. A module of its own because
the rule classes live in two modules (`rules`, and `drl`, which builds on `rules`): only a
module above both can list them all without an import cycle."""

from __future__ import annotations

from bioscale.algorithms.config import RULES, TP_RULES, RuleConfig
from bioscale.algorithms.drl import DRL, LDRL
from bioscale.algorithms.fa_variants import KP, SignSym
from bioscale.algorithms.rules import AOSDTP, BP, DFA, DTP, FA, SDTP, Rule, TargetPropagation

RULE_CLASSES: dict[str, type[Rule]] = {
    cls.name: cls for cls in (BP, FA, DFA, DTP, SDTP, AOSDTP, SignSym, KP, LDRL, DRL)
}
assert tuple(RULE_CLASSES) == RULES
# the TP rules (by name) are the TargetPropagation classes (by behaviour)
assert all((name in TP_RULES) == issubclass(cls, TargetPropagation) for name, cls in RULE_CLASSES.items())


def build_rule(cfg: RuleConfig) -> Rule:
    try:
        cls = RULE_CLASSES[cfg.rule]
    except KeyError:
        raise ValueError(f"unknown rule {cfg.rule!r}; known: {', '.join(RULES)}") from None
    return cls(cfg)
