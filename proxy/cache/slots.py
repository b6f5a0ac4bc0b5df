"""Redis Cluster key slots and the slot map (which primary serves which slot).

A key's slot is CRC16 (XMODEM, which `binascii.crc_hqx` computes in C) of its hash tag — the
part between the first `{` and the next `}`, when not empty — or of the whole key, mod 16384.
"""

from __future__ import annotations

from binascii import crc_hqx
from collections.abc import Sequence
from typing import Any

SLOTS = 16384

Address = tuple[str, int]


def keyslot(key: bytes) -> int:
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) & (SLOTS - 1)


class SlotMap:
    """Slot -> the primary serving it, from a `CLUSTER SLOTS` reply; a slot no primary serves
    maps to None (the cluster is reconfiguring)."""

    __slots__ = ("_owner", "primaries")

    def __init__(self, owner: Sequence[int], primaries: Sequence[Address]) -> None:
        self._owner = list(owner)  # index into primaries, -1 for none
        self.primaries = list(primaries)

    @classmethod
    def parse(cls, reply: Any, default_host: str) -> SlotMap:
        """`CLUSTER SLOTS`: [[start, end, [host, port, id, ...], replicas...], ...]. An empty
        host means "the address you reached me at" (`default_host`)."""
        if not isinstance(reply, list) or not reply:
            raise ValueError("CLUSTER SLOTS answered no slot ranges")
        owner = [-1] * SLOTS
        primaries: list[Address] = []
        for entry in reply:
            start, end, node = int(entry[0]), int(entry[1]), entry[2]
            host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
            address = (host or default_host, int(node[1]))
            if address not in primaries:
                primaries.append(address)
            index = primaries.index(address)
            owner[start : end + 1] = [index] * (end + 1 - start)
        return cls(owner, primaries)

    def node_of(self, slot: int) -> Address | None:
        index = self._owner[slot]
        return self.primaries[index] if index >= 0 else None

    def moved(self, slot: int, address: Address) -> None:
        """A MOVED reply: the slot is served elsewhere now (the full map is refreshed apart)."""
        if address not in self.primaries:
            self.primaries.append(address)
        self._owner[slot] = self.primaries.index(address)


def parse_redirect(message: str, default_host: str) -> tuple[str, int, Address] | None:
    """("MOVED" or "ASK", slot, address) of a redirection error, None for any other error."""
    parts = message.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    if not port.isdigit() or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), (host or default_host, int(port))
