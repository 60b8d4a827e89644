from gateway.text.stop import StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


def test_no_stop_strings_pass_text_through() -> None:
    assert StopMatcher(()).feed("abc") == ("abc", False)


def test_stop_inside_one_piece_cuts_before_it() -> None:
    assert feed_all(StopMatcher(("END",)), ["hello END world"]) == ("hello ", True)


def test_stop_split_across_pieces_is_never_sent() -> None:
    matcher = StopMatcher(("<|stop|>",))
    sent = []
    for piece in ["a <", "|st", "op", "|> tail"]:
        text, stopped = matcher.feed(piece)
        sent.append(text)
        assert "<" not in text or (stopped is False and "<|" not in text)
        if stopped:
            break
    assert "".join(sent) == "a "
    assert stopped


def test_partial_prefix_is_held_then_released() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("ab ST") == ("ab ", False)
    assert matcher.feed("AR") == ("STAR", False)
    assert matcher.flush() == ""


def test_held_text_is_flushed_at_the_end() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("abc S") == ("abc ", False)
    assert matcher.flush() == "S"


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(("world", "lo w")), ["hel", "lo world"]) == ("hel", True)


def test_overlapping_prefixes() -> None:
    # "aab" must still match when the held suffix "aa" is a longer partial than needed
    assert feed_all(StopMatcher(("aab",)), ["xa", "a", "ab"]) == ("xa", True)


def test_text_equal_to_stop_string() -> None:
    assert feed_all(StopMatcher(("\n\n",)), ["line", "\n", "\n", "more"]) == ("line", True)
