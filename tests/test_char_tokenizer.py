"""The character tokenizer and the tokenizer registry."""

from __future__ import annotations

import pytest

from generate.errors import UserError
from generate.tokenizers import CharTokenizer, tokenizer_from_dict


def test_round_trip_and_plain_dict() -> None:
    text = "ROMEO: Wherefore art thou?\nJULIET: ¿Qué? 音楽 🎵\n"
    tok = CharTokenizer.fit(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text))
    assert max(ids) < tok.vocab_size
    data = tok.to_dict()
    assert all(isinstance(v, str) for v in data.values())  # plain data, safe in a checkpoint
    again = tokenizer_from_dict(data)
    assert isinstance(again, CharTokenizer) and again.encode(text) == ids


def test_unseen_characters_are_named() -> None:
    tok = CharTokenizer.fit("abc")
    with pytest.raises(UserError) as err:
        tok.encode("abz~z")
    message = str(err.value)
    assert "'z'" in message and "'~'" in message and "2 character(s)" in message
    assert "\n" not in message


def test_start_ids_begin_a_line() -> None:
    assert CharTokenizer.fit("ab\nc").decode(CharTokenizer.fit("ab\nc").start_ids()) == "\n"
    assert CharTokenizer.fit("xyz").start_ids() == [0]


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_dict({"kind": "nope"})
