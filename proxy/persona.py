"""Persona headers: validation, canonical form and personalisation score (docs/design.md §3)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from proxy.failures import InvalidRequest
from proxy.settings import PERSONA_DIMENSIONS, PersonaSettings

HEADER_BY_DIMENSION = {
    "experience": "X-Persona-Experience",
    "learning_style": "X-Persona-Learning-Style",
    "tone": "X-Persona-Tone",
    "density": "X-Persona-Density",
    "interests": "X-Persona-Interests",
}
USER_ID_HEADER = "X-User-Id"
_TAG = re.compile(r"^[a-z0-9][a-z0-9 _.+#-]{0,39}$")
_USER_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


class Persona(msgspec.Struct, frozen=True, omit_defaults=True):
    """Who the content is for. Unset dimensions are None (interests: empty)."""

    experience: str | None = None
    learning_style: str | None = None
    tone: str | None = None
    density: str | None = None
    interests: tuple[str, ...] = ()

    def value(self, dimension: str) -> str | None:
        if dimension == "interests":
            return ",".join(self.interests) or None
        value: str | None = getattr(self, dimension)
        return value

    @property
    def score(self) -> float:
        """The share of persona dimensions set: 0.0 (generic) to 1.0 (fully personal)."""
        return sum(self.value(d) is not None for d in PERSONA_DIMENSIONS) / len(PERSONA_DIMENSIONS)

    def project(self, dimensions: tuple[str, ...]) -> tuple[str | None, ...]:
        """The chosen dimensions' values, in `dimensions` order (the persona part of a key)."""
        return tuple(self.value(d) for d in dimensions)

    def as_dict(self) -> dict[str, str]:
        return {d: v for d in PERSONA_DIMENSIONS if (v := self.value(d)) is not None}


NO_PERSONA = Persona()


class PersonaParser:
    """Parses and validates persona headers; built once from settings."""

    def __init__(self, settings: PersonaSettings) -> None:
        self._allowed: dict[str, frozenset[str]] = {
            "experience": frozenset(settings.experience),
            "learning_style": frozenset(settings.learning_style),
            "tone": frozenset(settings.tone),
            "density": frozenset(settings.density),
        }
        self._listed = {
            d: ", ".join(values)
            for d, values in (
                ("experience", settings.experience),
                ("learning_style", settings.learning_style),
                ("tone", settings.tone),
                ("density", settings.density),
            )
        }
        self._interests_max = settings.interests_max

    def parse(self, headers: Mapping[str, str]) -> Persona:
        if not any(h in headers for h in HEADER_BY_DIMENSION.values()):
            return NO_PERSONA
        values: dict[str, str] = {}
        for dimension, allowed in self._allowed.items():
            header = HEADER_BY_DIMENSION[dimension]
            raw = headers.get(header)
            if raw is None or not raw.strip():
                continue
            value = raw.strip().lower()
            if value not in allowed:
                raise InvalidRequest(
                    f"{header} must be one of: {self._listed[dimension]} (got {raw.strip()!r})",
                    param=header,
                )
            values[dimension] = value
        interests = self.parse_interests(headers.get(HEADER_BY_DIMENSION["interests"], ""))
        return Persona(**values, interests=interests)

    def parse_interests(self, raw: str) -> tuple[str, ...]:
        header = HEADER_BY_DIMENSION["interests"]
        tags = {tag.strip().lower() for tag in raw.split(",")} - {""}
        for tag in tags:
            if not _TAG.match(tag):
                raise InvalidRequest(
                    f"{header} takes comma-separated tags of letters, digits, space and _.+#- "
                    f"(at most 40 characters each); {tag[:40]!r} is not one",
                    param=header,
                )
        if len(tags) > self._interests_max:
            raise InvalidRequest(
                f"{header} takes at most {self._interests_max} distinct tags (got {len(tags)})",
                param=header,
            )
        return tuple(sorted(tags))


def parse_user_id(headers: Mapping[str, str], body_user: object) -> str | None:
    """`X-User-Id` (printable, no spaces, at most 128 characters), else the body's `user`.

    The body field is the SDK's own `user` parameter, which OpenAI accepts as any string, so it
    is only checked for type and length here.
    """
    raw = headers.get(USER_ID_HEADER)
    if raw is not None:
        user_id = raw.strip()
        if not _USER_ID.match(user_id):
            raise InvalidRequest(
                f"{USER_ID_HEADER} must be 1 to 128 printable characters without spaces",
                param=USER_ID_HEADER,
            )
        return user_id
    if body_user is None or body_user == "":
        return None
    if not isinstance(body_user, str) or len(body_user) > 512:
        raise InvalidRequest("user must be a string of at most 512 characters", param="user")
    return body_user
