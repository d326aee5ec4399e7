"""Finding a file's item record when a listing raced its mover, and making sure a file
gets one record, not two: a mixin of `state.Queue` (it uses items, path, load_item and
_item_path).

A move renames the file, then saves the record, so a record can be one step behind its
file (never ahead, but for a brand-new record saved before its rename). These helpers
look past that window: `record_of` waits for a mover's save; `_still_recordless` and
`_other_record` are the checks a process makes after saving a record it believes is the
file's first."""

from __future__ import annotations

import contextlib
import os
import time

from shardkit.queue.model import STATE_DIRS, TRANSITIONS, Entry, Item, numbered_name, settled_first


class RecordLookup:
    """record_of and the checks around adopting a file: a mixin of `state.Queue`."""

    def record_of(self, entry: Entry) -> Item | None:
        """The entry's record, looked for again if the listing found none: it may have been
        saved by its mover after our listing, or missed by a readdir that raced with a
        record being replaced. Only then is a file without a record adopted."""
        # A record of this name one step behind (its file not where it says) means a mover is
        # between its rename and its save: wait for that save, about 0.4 s at most (it
        # follows two folder fsyncs and a journal fsync, tens of ms on a loaded machine), and
        # only then take the record as it is. Adopting at once split one item in two in the
        # race test. With no such record (a file put there by hand) there is nothing to wait for.
        for k, delay in enumerate((0.0, 0.01, 0.04, 0.1, 0.25)):
            if entry.item is not None:
                break
            time.sleep(delay)
            items = self.items()
            entry.item = self._record_at(entry, items)
            if entry.item is None and k >= 1 and self._record_behind(entry, items) is None:
                break  # twice nothing of this name (a readdir racing a save is looked past once)
        if entry.item is None:  # after the wait: a record left behind by a mover that died
            entry.item = self._record_behind(entry, self.items())
            if entry.item is not None:
                entry.item.state = entry.state
        return entry.item

    def _still_recordless(self, entry: Entry, own: str) -> bool:
        """After saving a record for a file that looked record-less: the file is still
        there, and no other record names it (in that state, or one step behind it). A
        listing that raced a mover can see a file whose record is a step behind; by the
        time the record is looked for, the file may have moved on (a retry): adopting it
        then gave the file a second record (the race test's "record says failed, but no
        such file"). Checked after the save, so a mover that comes later finds ours."""
        return os.path.lexists(entry.path) and self._other_record(entry, own) is None

    def _other_record(self, entry: Entry, own: str) -> Item | None:
        """A record besides `own` that names this file: in its state, or one step behind."""
        items = [item for item in self.items() if item.id != own]
        return self._record_at(entry, items) or self._record_behind(entry, items)

    @staticmethod
    def _record_at(entry: Entry, items: list[Item]) -> Item | None:
        """The (most settled) record that puts a file of this name in this state."""
        same = [i for i in items if i.state == entry.state and i.name == entry.name]
        return min(same, key=settled_first) if same else None

    def _drop_if_untouched(self, item: Item, state: str, name: str) -> None:
        """Delete a record this process just made, unless another process has taken it up
        and saved it since (more history, or another place)."""
        mine = self.load_item(item.id)
        if mine is not None and len(mine.history) == 1 and (mine.state, mine.name) == (state, name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._item_path(item.id))

    def _record_behind(self, entry: Entry, items: list[Item]) -> Item | None:
        """A record whose file is not where it says, and that one move takes to this file:
        this file's record, one step behind its move (doctor's record_behind). One move:
        from the record's state to the entry's by a transition of the table, under the same
        name or the NAME-k a taken name gives. A completed record whose file a prune
        removed is never a new inbox drop's of the same name."""
        for item in items:
            if (item.state in STATE_DIRS and one_move(item.state, entry.state)
                    and entry.name in (item.name, *renamed_forms(item.name, entry.name))
                    and not os.path.lexists(self.path(item.state, item.name))):
                return item
        return None


def one_move(src: str, dst: str) -> bool:
    return src == dst or any(src in sources and dst in targets
                             for op, (sources, targets) in TRANSITIONS.items() if op != "adopt")


def renamed_forms(name: str, seen: str) -> tuple[str, ...]:
    """`seen` when it is `name` renamed by a move (NAME-k), else nothing."""
    head, sep, tail = seen.rpartition("-")
    digits = tail.split(".", 1)[0]
    if sep and digits.isdigit() and int(digits) >= 2 and numbered_name(name, int(digits)) == seen:
        return (seen,)
    return ()
