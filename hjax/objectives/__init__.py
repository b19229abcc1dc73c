"""hjax.objectives: every algorithm as one registered objective, shared by all protocols.

See :mod:`hjax.objectives.registry` for the signature and the :class:`Form` that states how
the IRM-script and DomainBed protocols differ.
"""

from hjax.objectives import baselines, hessian_alignment  # noqa: F401  (registers)
from hjax.objectives.registry import (DOMAINBED_FORM, IRM_SCRIPT_FORM, OBJECTIVES, Form,
                                      Inputs, Objective, Output, get_objective, register)

__all__ = ["DOMAINBED_FORM", "Form", "IRM_SCRIPT_FORM", "Inputs", "OBJECTIVES", "Objective",
           "Output", "get_objective", "register"]
