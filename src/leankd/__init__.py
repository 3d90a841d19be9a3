"""leankd: knowledge distillation at minimal compute, with an honest cost ledger."""

__version__ = "0.1.0"
