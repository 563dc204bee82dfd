"""Learning rules (BP, FA, DFA, DTP, SDTP, AO-SDTP, sign-symmetry, Kolen–Pollack, L-DRL, DRL) as what crosses each
block boundary in the backward pass; inverse losses; schedules; optimizers; BP-angle diagnostics.

Knows nothing of data or the cluster."""

from bioscale.algorithms.config import (
    INVERSE_LOSSES,
    RULES,
    SCHEDULES,
    TP_RULES,
    AdamConfig,
    OptimConfig,
    RuleConfig,
)
from bioscale.algorithms.learner import Learner, StepOutput, build_learner
from bioscale.algorithms.registry import RULE_CLASSES, build_rule
from bioscale.algorithms.rules import Rule

__all__ = [
    "INVERSE_LOSSES",
    "RULES",
    "RULE_CLASSES",
    "SCHEDULES",
    "TP_RULES",
    "AdamConfig",
    "Learner",
    "OptimConfig",
    "Rule",
    "RuleConfig",
    "StepOutput",
    "build_learner",
    "build_rule",
]

from bioscale.algorithms.diagnostics import (  # noqa: E402
    angles_to_bp,
    bp_directions,
    feedback_angles,
    signal_cosines,
    update_directions,
)
from bioscale.algorithms.optim import Updater  # noqa: E402

__all__ += ["Updater", "angles_to_bp", "bp_directions", "feedback_angles", "signal_cosines", "update_directions"]
