"""The states a store records, one enum each: the models' CHECK constraints,
the API's argument checks and the CLI's choices are all made from these, so a
state is named in one place. Members are strings (`CycleStatus.COMPLETED ==
"completed"`), which is what the columns hold and what results carry."""

from __future__ import annotations

import sys
from enum import Enum
from typing import TypeVar

from sona_store.errors import ValidationError

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        """`enum.StrEnum` of Python 3.11: str() of a member is its value."""

        def __str__(self) -> str:
            return str(self.value)


class CycleStatus(StrEnum):
    COMPLETED = "completed"
    SKIPPED = "skipped"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class CycleTrigger(StrEnum):
    FORCED = "forced"
    SCHEDULED = "scheduled"
    MANUAL = "manual"


class LoraTier(StrEnum):
    BASE = "base"
    MICRO = "micro"


# A cycle that did its work: completed, and perhaps rolled back since.
RAN_STATUSES = (CycleStatus.COMPLETED, CycleStatus.ROLLED_BACK)


def sql_in(column: str, states: type[StrEnum]) -> str:
    """The CHECK constraint text `column IN ('a', 'b')` for an enum, in
    declaration order: exactly what the migrations wrote, so the schema drift
    test compares equal. Values are the enum's own literals, never user input."""
    return f"{column} IN ({', '.join(repr(member.value) for member in states)})"


E = TypeVar("E", bound=StrEnum)


def parse(states: type[E], value: object, field: str) -> E:
    """`value` as a member of `states`, or a ValidationError (a ValueError)
    naming the choices and writing nothing."""
    try:
        return states(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in states)
        raise ValidationError(f"unknown {field} {value!r}: one of {choices}", field=field) from None
