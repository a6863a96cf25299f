"""Masking on read: masking functions, roles and policies.

``compile_policy(roles, policies)`` validates the ``[roles]`` and ``[policies]``
sections once; ``PolicySet.role(name).apply(tables, keyring.derive, entity_key=...)``
masks an entity instance's tables for that role.
"""

from masking.functions import MaskContext, MaskFunction, function_names, get_function
from masking.policy import MaskedTables, PolicySet, PolicySpec, Role, RoleSpec, Rule, RuleSpec, compile_policy

__all__ = [
    "MaskContext",
    "MaskFunction",
    "MaskedTables",
    "PolicySet",
    "PolicySpec",
    "Role",
    "RoleSpec",
    "Rule",
    "RuleSpec",
    "compile_policy",
    "function_names",
    "get_function",
]
