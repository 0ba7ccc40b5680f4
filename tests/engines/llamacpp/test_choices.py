"""ChoiceState: stop strings across deltas, held-back text, finish reasons and the logprobs that go with text."""

from __future__ import annotations

from pipeserve.engines.base import TokenLogprob
from pipeserve.engines.llamacpp.choices import ChoiceState, Emitted
from pipeserve.engines.llamacpp.slots import TextDelta
from pipeserve.engines.llamacpp.toolcalls import OneCall


def lp(token: str) -> TokenLogprob:
    return TokenLogprob(token=token, bytes=token.encode(), logprob=-0.5, top=[])


def delta(text: str, tokens: int = 1, *, logprobs: list[str] | None = None, finish: str | None = None) -> TextDelta:
    entries = None if logprobs is None else [lp(t) for t in logprobs]
    return TextDelta(index=0, text=text, tokens=tokens, logprobs=entries, finish_reason=finish)


def texts(state: ChoiceState, *chunks: str) -> list[str]:
    out = []
    for chunk in chunks:
        emitted = state.feed(delta(chunk))
        assert emitted is not None
        out.append(emitted.text)
    return out


def tokens_of(emitted: Emitted | None) -> list[str]:
    assert emitted is not None
    return [entry.token for entry in emitted.logprobs]


def test_plain_text_passes_through() -> None:
    state = ChoiceState(0, ())
    assert state.feed(delta("Hello")) == Emitted("Hello", [], None)
    assert state.feed(delta(" world", finish="length")) == Emitted(" world", [], "length")
    assert state.content == "Hello world"
    assert state.finish_reason == "length"


def test_stop_string_spanning_several_deltas() -> None:
    state = ChoiceState(0, ("END",))
    assert texts(state, "abcE", "N") == ["abc", ""]
    emitted = state.feed(delta("Dxyz"))
    assert emitted == Emitted("", [], "stop")
    assert state.content == "abc"
    assert state.finish_reason == "stop"


def test_held_text_is_released_once_it_cannot_start_a_stop_string() -> None:
    state = ChoiceState(0, ("END",))
    assert texts(state, "abE", "N", "x", "E", "y") == ["ab", "", "ENx", "", "Ey"]
    assert state.finish_reason is None
    assert state.content == "abENxEy"


def test_longest_partial_match_of_any_stop_string_is_held() -> None:
    state = ChoiceState(0, ("abc", "bx"))
    assert texts(state, "zab") == ["z"]
    emitted = state.feed(delta("x"))
    assert emitted == Emitted("a", [], "stop")
    assert state.content == "za"


def test_earliest_stop_string_wins_whatever_its_order_or_length() -> None:
    for stops in [("cd", "bcde"), ("bcde", "cd")]:
        state = ChoiceState(0, stops)
        assert state.feed(delta("abcdef")) == Emitted("a", [], "stop")
        assert state.content == "a"


def test_stop_string_inside_one_delta_is_cut_and_never_emitted() -> None:
    state = ChoiceState(0, ("\n\n",))
    emitted = state.feed(delta("one\n\ntwo"))
    assert emitted == Emitted("one", [], "stop")
    assert "\n" not in state.content


def test_stop_match_beats_the_engines_finish_reason() -> None:
    state = ChoiceState(0, ("X",))
    assert state.feed(delta("aXb", finish="length")) == Emitted("a", [], "stop")
    assert state.finish_reason == "stop"


def test_engine_finish_flushes_held_text_with_its_reason() -> None:
    for reason in ("length", "stop"):
        state = ChoiceState(0, ("END",))
        assert texts(state, "abEN") == ["ab"]
        assert state.feed(delta("", 0, finish=reason)) == Emitted("EN", [], reason)
        assert state.content == "abEN"
        assert state.finish_reason == reason


def test_deltas_after_finishing_are_ignored() -> None:
    stopped = ChoiceState(0, ("!",))
    stopped.feed(delta("hi!", 2))
    finished = ChoiceState(0, ())
    finished.feed(delta("hi", 2, finish="length"))
    for state in (stopped, finished):
        assert state.feed(delta("more", 3, logprobs=["more"], finish="length")) is None
        assert state.content == "hi"
        assert state.tokens == 2
        assert state.logprobs == []


def test_tokens_are_counted_up_to_and_including_the_finishing_delta() -> None:
    state = ChoiceState(0, ("STOP",))
    state.feed(delta("a", 1))
    state.feed(delta("bST", 2))
    state.feed(delta("OP", 3))
    state.feed(delta("ignored", 4))
    assert state.tokens == 6


def test_logprob_is_released_with_the_first_character_of_its_token() -> None:
    state = ChoiceState(0, ("YZ",))
    assert tokens_of(state.feed(delta("ab", logprobs=["ab"]))) == ["ab"]
    emitted = state.feed(delta("cY", logprobs=["cY"]))
    assert emitted is not None and emitted.text == "c"
    assert tokens_of(emitted) == ["cY"]
    emitted = state.feed(delta("Y", logprobs=["Y"]))
    assert emitted is not None and (emitted.text, emitted.logprobs) == ("Y", [])
    emitted = state.feed(delta("q", logprobs=["q"]))
    assert emitted is not None and emitted.text == "Yq"
    assert tokens_of(emitted) == ["Y", "q"]
    assert [e.token for e in state.logprobs] == ["ab", "cY", "Y", "q"]


def test_logprob_of_a_token_without_text_waits_for_the_next_character() -> None:
    state = ChoiceState(0, ())
    assert tokens_of(state.feed(delta("", logprobs=["€ (1st byte)"]))) == []
    assert tokens_of(state.feed(delta("€", logprobs=["€ (2nd byte)"]))) == ["€ (1st byte)", "€ (2nd byte)"]


def test_logprobs_at_or_after_a_matched_stop_string_are_dropped() -> None:
    state = ChoiceState(0, ("STOP",))
    assert tokens_of(state.feed(delta("ok", logprobs=["ok"]))) == ["ok"]
    assert tokens_of(state.feed(delta("S", logprobs=["S"]))) == []
    emitted = state.feed(delta("TOPx", logprobs=["TOPx"]))
    assert emitted is not None and (emitted.text, emitted.finish_reason) == ("", "stop")
    assert emitted.logprobs == []
    assert [e.token for e in state.logprobs] == ["ok"]


def test_token_straddling_the_stop_string_keeps_its_logprob() -> None:
    state = ChoiceState(0, ("STOP",))
    state.feed(delta("a", logprobs=["a"]))
    emitted = state.feed(delta("bST", logprobs=["bST"]))
    assert emitted is not None and emitted.text == "b"
    assert tokens_of(emitted) == ["bST"]
    emitted = state.feed(delta("OP", logprobs=["OP"]))
    assert emitted is not None and emitted.logprobs == [] and emitted.finish_reason == "stop"
    assert [e.token for e in state.logprobs] == ["a", "bST"]


def test_held_logprobs_are_released_on_the_engines_finish() -> None:
    state = ChoiceState(0, ("XY",))
    state.feed(delta("X", logprobs=["X"]))
    emitted = state.feed(delta("", 0, logprobs=[], finish="stop"))
    assert emitted is not None and emitted.text == "X"
    assert tokens_of(emitted) == ["X"]
    assert [e.token for e in state.logprobs] == ["X"]


CALL = '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'


def test_with_one_call_the_choice_ends_right_after_its_first_complete_call() -> None:
    state = ChoiceState(0, (), one_call=OneCall(frozenset({"add"})))
    pieces = ["Sure ", '<tool_call>{"name": "nope", "arguments": {}}</tool_call>', CALL[:20], CALL[20:-3]]
    assert [e.finish_reason for e in map(state.feed, map(delta, pieces))] == [None] * 4
    emitted = state.feed(delta(CALL[-3:] + "\nMore", logprobs=["l>\nMore"]))
    assert emitted is not None and emitted.finish_reason == "stop"
    assert state.content == "Sure " + '<tool_call>{"name": "nope", "arguments": {}}</tool_call>' + CALL
    assert tokens_of(emitted) == ["l>\nMore"]  # the token that ends the call keeps its logprob
    assert state.feed(delta("ignored")) is None


def test_with_one_call_a_stop_string_before_the_call_ends_still_wins() -> None:
    state = ChoiceState(0, ("Sure",), one_call=OneCall(frozenset({"add"})))
    emitted = state.feed(delta("Ok Sure " + CALL))
    assert emitted == Emitted("Ok ", [], "stop")


def test_without_one_call_calls_do_not_end_the_choice() -> None:
    state = ChoiceState(0, ())
    assert state.feed(delta(CALL + CALL)) == Emitted(CALL + CALL, [], None)


def test_with_one_leading_call_content_first_means_no_call_ends_the_choice() -> None:
    state = ChoiceState(0, (), one_call=OneCall(frozenset({"add"}), leading=True))
    assert state.feed(delta("Sure " + CALL + " more")) == Emitted("Sure " + CALL + " more", [], None)
    state = ChoiceState(0, (), one_call=OneCall(frozenset({"add"}), leading=True))
    assert [state.feed(delta(piece)) for piece in ("\n<tool", CALL[5:] + " more")][-1] == Emitted(CALL[5:], [], "stop")
    assert state.content == "\n" + CALL
