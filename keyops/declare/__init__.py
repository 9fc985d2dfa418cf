"""Declared state: the YAML that says which tenants, policies, master key settings and access roles exist.

Pure: parsing, validation and the comparison with what the store holds take
no I/O (the operations in ``keyops.ops.plan`` read the store and carry out
the steps). The schema is also shipped as JSON Schema
(``schema/keyops-declaration.schema.json``) for editors; a test keeps the two
in agreement.
"""

from __future__ import annotations

from keyops.declare.schema import (
    POLICY_FIELDS,
    AccessSpec,
    Declaration,
    MasterSpec,
    SeedSpec,
    TenantSpec,
    load_file,
    load_text,
    validate,
)
from keyops.declare.steps import Observed, Plan, Step, TenantState, diff

__all__ = ["POLICY_FIELDS", "AccessSpec", "Declaration", "MasterSpec", "Observed", "Plan", "SeedSpec", "Step",
           "TenantSpec", "TenantState", "diff", "load_file", "load_text", "validate"]
