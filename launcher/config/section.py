"""``Section``: the base of every config section, the run's and each method's.

It lives apart from ``launcher.config.schema`` because the method sections are defined by the
strategies (``strategies.catalog``) and the schema is assembled from them: both sides import
this module, and neither imports the other's way back.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are checked on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def code_references(self) -> list[str]:
        """'module:attr' names of user code this section makes the run import (shipped with the
        run by ``launcher.core.user_code``); none by default."""
        return []

    def keeps_reference_model(self) -> bool:
        """A second, frozen model resident on every trainer rank (the planner counts its memory);
        a method's options say so (DPO/KTO with ``reference: model``); none by default."""
        return False
