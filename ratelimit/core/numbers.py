"""Exact amounts: validation of user numbers and the integer units Redis stores.

Rates count in integer micro-units (a millionth of a request or token) and
money in integer nano-dollars, so sums never drift. Every layer validates
numbers here, so a bad value gets the same typed error wherever it enters.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation, localcontext
from fractions import Fraction

from ratelimit.errors import InvalidArgument, InvalidArgumentType

#: One unit of a rate dimension (a request, a token) is this many integer micro-units.
MICRO = 1_000_000

#: One US dollar is this many integer nano-dollars. Every published price per
#: million tokens has at most three decimals, so every token's cost is a whole
#: number of nano-dollars and sums stay exact.
NANO = 1_000_000_000

#: The Lua scripts compute in doubles: integers must stay below 2^53 to be exact.
#: Rates are reduced to num/den micro-units per microsecond with num * den below
#: this bound, which leaves the scripts' intermediate products room to spare.
RATE_PRODUCT_LIMIT = 2**50
MAX_CAPACITY_MICRO = 2**50
MAX_BUDGET_NANO = 2**52


def exact(value: object, what: str, *, strings: bool = False) -> Decimal:
    """A finite number as an exact Decimal; bools, NaN and infinity are refused.

    Strings are accepted only where ``strings`` says so (money: "0.0123").
    """
    if isinstance(value, str) and strings:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidArgument(f"{what} must be a number, got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, int | float | Decimal | Fraction):
        raise InvalidArgumentType(f"{what} must be a number, not {type(value).__name__}")
    elif isinstance(value, Fraction):
        number = Decimal(value.numerator) / Decimal(value.denominator)
    elif isinstance(value, float):
        # The shortest repr is what the user wrote: 0.1 means one tenth.
        number = Decimal(repr(value))
    else:
        number = Decimal(value)
    if not number.is_finite():
        raise InvalidArgument(f"{what} must be finite, got {value!r}")
    return number


def positive(value: object, what: str) -> Decimal:
    """A finite number above zero, as an exact Decimal."""
    number = exact(value, what)
    if number <= 0:
        raise InvalidArgument(f"{what} must be positive, got {value!r}")
    return number


#: A plain decimal number short enough for integer arithmetic: the common
#: "0.003" of a price, and the repr of most floats.
_PLAIN = re.compile(r"\s*(\d{1,18})(?:\.(\d{1,18}))?\s*")


def scaled(value: object, what: str, scale: int, *, strings: bool = False) -> int:
    """A non-negative amount as an integer count of 1/scale units, rounded up."""
    if isinstance(value, int) and type(value) is not bool and 0 <= value < 2**63:
        return value * scale
    plain = None
    if isinstance(value, str) and strings:
        plain = _PLAIN.fullmatch(value)
    elif type(value) is float:
        plain = _PLAIN.fullmatch(repr(value))
    if plain is not None:
        # The same exact ceiling as below, in integers (a tenth of the time).
        whole, fraction = plain.groups()
        if fraction is None:
            return int(whole) * scale
        tens: int = 10 ** len(fraction)
        digits, rest = divmod(int(fraction) * scale, tens)
        return int(whole) * scale + digits + (rest > 0)
    number = exact(value, what, strings=strings)
    if number < 0:
        raise InvalidArgument(f"{what} must not be negative, got {value!r}")
    if number.adjusted() > 30:
        raise InvalidArgument(f"{what} is too large: {value!r}")
    # Exact: enough digits for any input's own and the scale's, so the
    # product is never rounded before the ceiling rounds it up.
    with localcontext() as ctx:
        ctx.prec = max(60, len(number.as_tuple().digits) + 40)
        return math.ceil(number * scale)


def to_micro(value: object, what: str) -> int:
    """A non-negative cost in units as integer micro-units, rounded up (never under-charged)."""
    return scaled(value, what, MICRO)


def to_nano(value: object, what: str) -> int:
    """A non-negative USD amount (number or numeric string) as nano-dollars, rounded up."""
    return scaled(value, what, NANO, strings=True)


def usd(nano: int) -> Decimal:
    """Nano-dollars as exact US dollars."""
    return Decimal(nano) / NANO


def text(value: object) -> str:
    """A Redis reply value (bytes or str) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
