"""Glob matching in time linear in the subject, whatever the pattern.

The syntax is the policy's: ``**`` matches any run of characters, ``*`` any run of characters
other than the separator, ``?`` exactly one character other than the separator, anything else
itself. The separator is ``/`` for paths, ``.`` for DNS names and none for other values (then
``*`` and ``**`` are the same).

Why not :mod:`re`: a pattern such as ``/api/**/files/**/versions/**/delete`` compiles to
``/api/.*/files/.*/versions/.*/delete``, which a backtracking engine matches in time polynomial
in the path (about 8x per doubling at three ``.*``), so one request can freeze a worker. Here
the pattern is a list of tokens and the matcher runs the NFA whose states are the token
positions, on all of its active states at once (Thompson's construction): one pass over the
subject, at most ``len(tokens) + 1`` states per character, never a step back. State sets seen
are memoised as DFA transitions (RE2's lazy DFA) per character class (the pattern's literals,
the separator, everything else), so the usual cost is two lookups per character and the memo's
size depends on the pattern alone; it is bounded, and past the bound transitions are computed
without being stored, which keeps the same linear bound. Pure: the memo only caches what the
NFA computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# token kinds
_LITERAL = 0  # the character itself
_ONE = 1  # ``?``: one character other than the separator
_STAR = 2  # ``*``: any run of characters other than the separator
_ANY = 3  # ``**``: any run of characters

#: transitions memoised per glob (a few KiB); past it the NFA runs without storing (still linear)
MEMO_LIMIT = 4096

_Tokens = tuple[tuple[int, str], ...]


def tokenize(pattern: str) -> _Tokens:
    """The pattern as (kind, character) tokens; ``**`` is one token, read left to right."""
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append((_ANY, ""))
            i += 2
        elif pattern[i] == "*":
            out.append((_STAR, ""))
            i += 1
        elif pattern[i] == "?":
            out.append((_ONE, ""))
            i += 1
        else:
            out.append((_LITERAL, pattern[i]))
            i += 1
    return tuple(out)


def is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def _closure(tokens: _Tokens, states: set[int]) -> frozenset[int]:
    """Add the positions reachable by letting ``*``/``**`` match the empty string."""
    todo = list(states)
    while todo:
        i = todo.pop()
        if i < len(tokens) and tokens[i][0] in (_STAR, _ANY) and i + 1 not in states:
            states.add(i + 1)
            todo.append(i + 1)
    return frozenset(states)


def _step(tokens: _Tokens, separator: str | None, states: frozenset[int], ch: str) -> frozenset[int]:
    """The NFA states after reading ``ch``: O(len(tokens))."""
    nxt: set[int] = set()
    for i in states:
        if i == len(tokens):
            continue
        kind, lit = tokens[i]
        if kind == _LITERAL:
            if ch == lit:
                nxt.add(i + 1)
        elif kind == _ANY:
            nxt.add(i)
        elif ch != separator:
            nxt.add(i if kind == _STAR else i + 1)
    return _closure(tokens, nxt)


@dataclass(eq=False, slots=True)
class Glob:
    """One compiled pattern; ``fullmatch`` says whether it matches the whole subject."""

    pattern: str
    separator: str | None
    #: transitions stored at most (0: run the NFA on every character; the linear bound holds either way)
    memo_limit: int = MEMO_LIMIT
    tokens: _Tokens = field(init=False)
    # Characters the pattern tells apart (its literals and the separator) each have a class; all
    # others share the last one, so the memo's size depends on the pattern, never on the subject.
    _classes: dict[str, int] = field(init=False, repr=False)
    _representatives: tuple[str, ...] = field(init=False, repr=False)  # "" stands for "any other"
    # DFA memo: state id -> next state id per class (-1: not computed yet); ids index _sets, _accepting
    _sets: list[frozenset[int]] = field(init=False, repr=False)
    _ids: dict[frozenset[int], int] = field(init=False, repr=False)
    _accepting: list[bool] = field(init=False, repr=False)
    _delta: list[list[int]] = field(init=False, repr=False)
    _memoised: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.tokens = tokenize(self.pattern)
        known = sorted({lit for kind, lit in self.tokens if kind == _LITERAL} | set(self.separator or ""))
        self._classes = {ch: i for i, ch in enumerate(known)}
        self._representatives = (*known, "")
        self._sets = []
        self._ids = {}
        self._accepting = []
        self._delta = []
        self._memoised = 0
        self._state_id(_closure(self.tokens, {0}))  # id 0: the start
        self._state_id(frozenset())  # id 1: dead, no match possible any more

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glob) and (self.pattern, self.separator) == (other.pattern, other.separator)

    def __hash__(self) -> int:
        return hash((self.pattern, self.separator))

    @property
    def literal_prefix(self) -> str:
        """What every match starts with: the characters before the first wildcard."""
        cut = min((i for i in (self.pattern.find("*"), self.pattern.find("?")) if i >= 0), default=len(self.pattern))
        return self.pattern[:cut]

    @property
    def is_prefix(self) -> bool:
        """``L**``: matches exactly the strings that start with ``L``."""
        return self.pattern == self.literal_prefix + "**"

    @property
    def memoised(self) -> int:
        """Transitions computed and stored so far (bounded by ``memo_limit``)."""
        return self._memoised

    def _state_id(self, states: frozenset[int]) -> int:
        sid = self._ids.get(states)
        if sid is None:
            sid = len(self._sets)
            self._ids[states] = sid
            self._sets.append(states)
            self._accepting.append(len(self.tokens) in states)
            self._delta.append([-1] * len(self._representatives))
        return sid

    def fullmatch(self, subject: str) -> bool:
        sid = 0
        delta, classes, other = self._delta, self._classes, len(self._representatives) - 1
        for pos, ch in enumerate(subject):
            cls = classes.get(ch, other)
            nxt = delta[sid][cls]
            if nxt < 0:
                if self._memoised >= self.memo_limit:
                    return self._run_uncached(self._sets[sid], subject, pos)
                nxt = self._state_id(_step(self.tokens, self.separator, self._sets[sid], self._representatives[cls]))
                delta[sid][cls] = nxt
                self._memoised += 1
            if nxt == 1:
                return False
            sid = nxt
        return self._accepting[sid]

    def _run_uncached(self, states: frozenset[int], subject: str, start: int) -> bool:
        for ch in subject[start:]:
            states = _step(self.tokens, self.separator, states, ch)
            if not states:
                return False
        return len(self.tokens) in states
