"""Which upstream serves a model, and what is tried after it (docs/design.md §13): the
`[[upstreams]]` and `[fallbacks]` settings made into a table once, at start-up.

Without `[[upstreams]]`, UPSTREAM_BASE_URL is the one upstream, named `default`, serving every
model. A model's chain is its upstream (the first whose globs match it, in file order), then
its `[fallbacks]` entries in order ("upstream": the same model there; "upstream:model": that
model there), each followed by the fallbacks of the model it names when that model differs,
depth first. A step reached twice is a cycle and stops start-up, as do an unknown upstream, a
duplicate name, a fallback key no upstream serves and an `api_key_env` that is not set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from proxy.settings import Settings, SettingsError
from proxy.settings_upstream import RouteSettings

DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Target:
    """One step of a chain: an upstream, and the model to ask it for (None: the client's)."""

    upstream: str
    model: str | None = None

    def label(self) -> str:
        return self.upstream if self.model is None else f"{self.upstream}:{self.model}"


@dataclass(frozen=True, slots=True)
class Route:
    """One upstream as configured; limits left unset are [upstream]'s."""

    name: str
    base_url: str
    models: tuple[str, ...]
    api: str = "openai"
    api_version: str = ""
    deployments: tuple[tuple[str, str], ...] = ()
    api_key: str | None = None  # managed credential (from api_key_env), never logged
    fail_max: int | None = None
    reset_s: float | None = None
    max_in_flight: int | None = None

    def serves(self, model: str) -> bool:
        return any(fnmatchcase(model, glob) for glob in self.models)


class RouteTable:
    def __init__(self, routes: list[Route], fallbacks: Mapping[str, list[str]]) -> None:
        self.routes = {route.name: route for route in routes}
        self._ordered = tuple(routes)
        self._fallbacks = {glob: tuple(map(_target, steps)) for glob, steps in fallbacks.items()}
        self._chains: dict[str | None, tuple[Target, ...]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RouteTable:
        """Raises SettingsError naming the setting when the routing is not usable (keys are
        read from the environment by proxy/settings_checks.py into `api_key`)."""
        configured = settings.upstreams
        if not configured:
            default = Route(DEFAULT, settings.upstream.base_url, ("*",))
            table = cls([default], settings.fallbacks)
        else:
            table = cls([_route(n, r) for n, r in enumerate(configured)], settings.fallbacks)
            if len(table.routes) != len(configured):
                names = [r.name for r in configured]
                dup = next(name for name in names if names.count(name) > 1)
                raise SettingsError(
                    f"invalid setting upstreams.name={dup!r} (config file): two upstreams "
                    "share the name; each needs its own"
                )
        table._check()
        return table

    def upstream_for(self, model: str | None) -> str | None:
        if model is None:
            return self._ordered[0].name
        return next((route.name for route in self._ordered if route.serves(model)), None)

    def chain(self, model: str | None) -> tuple[Target, ...]:
        """`model`'s upstream, then its fallbacks; empty when no upstream serves it."""
        found = self._chains.get(model)
        if found is None:
            first, steps = self.upstream_for(model), list[Target]()
            if first is not None:
                self._walk(model, first, steps, model)
            # the requested model itself is asked as None: the client's body goes unchanged
            found = tuple(Target(t.upstream, None if t.model == model else t.model) for t in steps)
            if len(self._chains) < 4096:  # model names are client-chosen: keep it bounded
                self._chains[model] = found
        return found

    def fallbacks_of(self, model: str | None) -> tuple[Target, ...]:
        if model is None:
            return ()
        return next((t for glob, t in self._fallbacks.items() if fnmatchcase(model, glob)), ())

    def _walk(self, model: str | None, upstream: str, steps: list[Target], top: str | None) -> None:
        """Appends (`upstream`, `model`), then `model`'s fallbacks, each naming another model
        followed by that model's own, depth first; raises SettingsError on a step reached
        twice (a cycle). `top`: the model whose chain this is, for the message."""
        self._add(Target(upstream, model), steps, top)
        for target in self.fallbacks_of(model):
            served = target.model or model
            if served == model:
                self._add(Target(target.upstream, model), steps, top)
            else:
                self._walk(served, target.upstream, steps, top)

    @staticmethod
    def _add(step: Target, steps: list[Target], top: str | None) -> None:
        if step in steps:
            shown = " -> ".join(t.label() for t in (*steps, step))
            raise SettingsError(
                f"invalid setting fallbacks.{top!r}={shown} (config file): a fallback cycle"
            )
        steps.append(step)

    def _check(self) -> None:
        for glob, steps in self._fallbacks.items():
            for target in steps:
                if target.upstream not in self.routes:
                    known = ", ".join(self.routes)
                    raise SettingsError(
                        f"invalid setting fallbacks.{glob!r}={target.label()!r} (config file): "
                        f"no upstream is named {target.upstream!r} (known: {known})"
                    )
            if self.upstream_for(glob) is None:
                raise SettingsError(
                    f"invalid setting fallbacks.{glob!r} (config file): no upstream's models "
                    "match it, so it has no upstream to fall back from"
                )
            self.chain(glob)  # raises on a cycle


def _target(step: str) -> Target:
    upstream, sep, model = step.partition(":")
    return Target(upstream.strip(), model.strip() if sep and model.strip() else None)


def _route(n: int, settings: RouteSettings) -> Route:
    key = settings.api_key if settings.api_key_env else None
    if settings.api_key_env and key is None:
        raise SettingsError(
            f"invalid setting upstreams[{n}].api_key_env={settings.api_key_env!r} (config "
            f"file): the environment variable is not set, so upstream {settings.name!r} "
            "has no key"
        )
    return Route(
        name=settings.name,
        base_url=settings.base_url,
        models=tuple(settings.models),
        api=settings.api,
        api_version=settings.api_version,
        deployments=tuple(settings.deployments.items()),
        api_key=key,
        fail_max=settings.breaker_fail_max,
        reset_s=settings.breaker_reset_s,
        max_in_flight=settings.max_in_flight,
    )
