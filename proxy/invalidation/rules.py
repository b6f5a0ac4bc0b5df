"""The rule book: which entries invalidation rules have made stale, checked on every hit.

Invalidation never touches entries (no KEYS, no scan): a rule is a selector stamped with a
generation, and an entry records the generation its replica knew when the miss began. An entry
is stale when a matching rule has a later generation. The check is O(1) for an entry newer than
every rule (the usual case) and one dictionary lookup per selector shape otherwise. Stale
entries are misses; the answer that follows overwrites them, and their TTL removes the rest.

The book holds at most `max_rules` rules (docs/design.md §3): past that it collapses a tenant's
rules into one "every entry of this tenant older than generation G" rule, largest tenant first,
until a quarter of the room is free, and only when that cannot free it (more tenants with rules
than three quarters of the room) everything into one "every entry older than G" rule. A collapsed
rule covers every entry the rules it replaces covered, so a stale entry is never served; the cost
is extra misses, and it falls on the tenant that made the rules before anyone else.
"""

from __future__ import annotations

import msgspec

from proxy.cache.entry import EntryMeta
from proxy.invalidation.selectors import Selector, Shape, Values, project


class Rule(msgspec.Struct, frozen=True):
    selector: Selector
    generation: int
    at: float  # epoch seconds (the Redis server's clock when shared)


_ALL: Shape = ()
_TENANT: Shape = ("tenant",)


class RuleBook:
    def __init__(self, max_rules: int = 10_000) -> None:
        self._tables: dict[Shape, dict[Values, int]] = {}
        self._rules: list[Rule] = []
        self.newest = 0  # the latest generation of any rule held
        self._max_rules = max_rules

    def __len__(self) -> int:
        return len(self._rules)

    def add(self, rule: Rule) -> None:
        if self._subsumed(rule):
            return
        self._index(rule)
        if len(self._rules) > self._max_rules:
            self._collapse()

    def _index(self, rule: Rule) -> None:
        shape, values = rule.selector.fields()
        table = self._tables.setdefault(shape, {})
        if table.get(values, -1) < rule.generation:
            table[values] = rule.generation
        self._rules.append(rule)
        self.newest = max(self.newest, rule.generation)

    def _subsumed(self, rule: Rule) -> bool:
        """Whether an `all` or whole-tenant rule held already covers everything `rule` would
        (so a reload after a collapse does not bring the collapsed rules back)."""
        generation = rule.generation
        if self._tables.get(_ALL, {}).get((), -1) >= generation:
            return True
        tenant = None if rule.selector.all else rule.selector.tenant
        return tenant is not None and self._tables.get(_TENANT, {}).get((tenant,), -1) >= generation

    def _collapse(self) -> None:
        """Makes room: see the module docstring. O(rules), once per quarter of the room."""
        target = max(1, self._max_rules * 3 // 4)
        groups: dict[str | None, list[Rule]] = {}
        for rule in self._rules:
            groups.setdefault(None if rule.selector.all else rule.selector.tenant, []).append(rule)
        count = len(self._rules)
        kept: dict[str | None, list[Rule]] = dict(groups)
        for tenant, rules in sorted(groups.items(), key=lambda item: -len(item[1])):
            if count <= target:
                break
            if len(rules) > 1:
                selector = Selector(all=True) if tenant is None else Selector(tenant=tenant)
                kept[tenant] = [_merged(selector, rules)]
                count -= len(rules) - 1
        if count > target:
            self._rebuild([_merged(Selector(all=True), self._rules)])
        else:
            self._rebuild([rule for rules in kept.values() for rule in rules])

    def is_stale(self, meta: EntryMeta) -> bool:
        if meta.generation >= self.newest:
            return False
        for shape, table in self._tables.items():
            values = project(meta, shape)
            if values is not None and table.get(values, -1) > meta.generation:
                return True
        return False

    def generations(self) -> set[int]:
        return {rule.generation for rule in self._rules}

    def prune(self, older_than: float) -> None:
        """Forgets rules made before `older_than`: every entry they could cover has expired."""
        kept = [rule for rule in self._rules if rule.at >= older_than]
        if len(kept) != len(self._rules):
            self._rebuild(kept)

    def _rebuild(self, rules: list[Rule]) -> None:
        self._tables.clear()
        self._rules = []
        newest = self.newest
        for rule in rules:
            self._index(rule)
        self.newest = newest  # entries older than a pruned rule have expired; keep the bound


def _merged(selector: Selector, rules: list[Rule]) -> Rule:
    """One rule covering every entry `rules` cover (and more): the newest generation and time."""
    return Rule(selector, max(r.generation for r in rules), max(r.at for r in rules))
