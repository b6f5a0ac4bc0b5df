"""The rule book: which entries invalidation rules have made stale, checked on every hit.

Invalidation never touches entries (no KEYS, no scan): a rule is a selector stamped with a
generation, and an entry records the generation its replica knew when the miss began. An entry
is stale when a matching rule has a later generation. The check is O(1) for an entry newer than
every rule (the usual case) and one dictionary lookup per selector shape otherwise. Stale
entries are misses; the answer that follows overwrites them, and their TTL removes the rest.
"""

from __future__ import annotations

import msgspec

from proxy.cache.entry import EntryMeta
from proxy.invalidation.selectors import Selector, Shape, Values, project


class Rule(msgspec.Struct, frozen=True):
    selector: Selector
    generation: int
    at: float  # epoch seconds (the Redis server's clock when shared)


class RuleBook:
    def __init__(self) -> None:
        self._tables: dict[Shape, dict[Values, int]] = {}
        self._rules: list[Rule] = []
        self.newest = 0  # the latest generation of any rule held

    def __len__(self) -> int:
        return len(self._rules)

    def add(self, rule: Rule) -> None:
        shape, values = rule.selector.fields()
        table = self._tables.setdefault(shape, {})
        if table.get(values, -1) < rule.generation:
            table[values] = rule.generation
        self._rules.append(rule)
        self.newest = max(self.newest, rule.generation)

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
        if len(kept) == len(self._rules):
            return
        self._tables.clear()
        self._rules = []
        newest = self.newest
        for rule in kept:
            self.add(rule)
        self.newest = newest  # entries older than a pruned rule have expired; keep the bound
