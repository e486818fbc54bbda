"""The custom resources' schemas, in one typed source: the three CRD copies are generated from it (`make crds`),
and tests check the status the controller writes against it."""

from .agent import CRD as AGENT_CRD
from .agent_target import CRD as AGENT_TARGET_CRD
from .stack import CRD as STACK_CRD

CRDS = (STACK_CRD, AGENT_TARGET_CRD, AGENT_CRD)

__all__ = ["AGENT_CRD", "AGENT_TARGET_CRD", "CRDS", "STACK_CRD"]
