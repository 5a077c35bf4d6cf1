from __future__ import annotations

from agent.output.lines import LevelClassifier, LineSplitter, kind_of, kinds


def feed_all(chunks: list[bytes], max_chars: int = 1 << 20) -> tuple[list[str], list[str | None]]:
    s = LineSplitter(max_chars)
    lines: list[str] = []
    transients: list[str | None] = []
    for i, chunk in enumerate(chunks):
        got, transient = s.feed(chunk, final=i == len(chunks) - 1)
        lines += got
        transients.append(transient)
    return lines, transients


def test_lines_split_across_chunks_keep_order() -> None:
    lines, _ = feed_all([b"a\nb", b"c\nd\n", b"e", b""])
    assert lines == ["a", "bc", "d", "e"]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    lines, _ = feed_all([b"one\r", b"\ntwo\r\n", b""])
    assert lines == ["one", "two"]


def test_carriage_return_redraws_fold_to_last_state() -> None:
    lines, transients = feed_all([b"\r 10%|#  | 1/10\r 20%|## | 2/10", b"\r100%|###| 10/10\n", b""])
    assert lines == ["100%|###| 10/10"]
    assert transients[0] == " 20%|## | 2/10"


def test_utf8_split_inside_a_character() -> None:
    data = "héllo wörld\n".encode()
    lines, _ = feed_all([data[:2], data[2:], b""])
    assert lines == ["héllo wörld"]


def test_overlong_line_is_cut_not_dropped() -> None:
    lines, _ = feed_all([b"x" * 25 + b"\n", b""], max_chars=10)
    assert lines == ["x" * 10, "x" * 10, "x" * 5]


def test_levels_from_common_forms() -> None:
    c = LevelClassifier()
    assert c.level("[INFO] loading") == "INFO"
    assert c.level("WARNING: low memory") == "WARNING"
    assert c.level("2024-01-01 12:00:00 - ERROR - boom") == "ERROR"
    assert c.level("[warn] soft") == "WARNING"
    assert c.level("level=debug x") == "DEBUG"
    assert c.level("UserWarning: deprecated") == "WARNING"
    assert c.level("no error here") == "INFO"
    assert c.level("Traceback (most recent call last):") == "ERROR"
    assert c.level('  File "x.py", line 1') == "ERROR"
    assert c.level("RuntimeError: CUDA out of memory") == "ERROR"
    assert c.level("next normal line") == "INFO"


def test_eval_kind() -> None:
    assert kind_of("{'eval_loss': 0.3}") == "eval"
    assert kind_of("step 3 loss 0.2") == "train"


def classify_chunk(c: LevelClassifier, lines: list[str]) -> list[str]:
    return c.levels(lines, "\n".join(lines))


def test_levels_of_a_chunk_take_the_first_level_word_of_each_line() -> None:
    lines = [
        "plain",
        "ERROR then INFO",  # the first word wins
        "INFORMATION is not a level word",
        "xERROR glued to a word is not one either",
        "[Error] bracketed words count in any case",
        "x" * 120 + " ERROR far into the line is message text",
        "FutureWarning: soon",
        "2024 | WARN | short form",
    ]
    assert classify_chunk(LevelClassifier(), lines) == [
        "INFO", "ERROR", "INFO", "INFO", "ERROR", "INFO", "WARNING", "WARNING",
    ]


def test_traceback_spans_chunks_and_ends_at_its_exception_line() -> None:
    c = LevelClassifier()
    first = ["step 1", "Traceback (most recent call last):", '  File "train.py", line 3']
    second = ["    main()", "ValueError: boom", "after the crash", "also Traceback (most recent call last): quoted"]
    assert classify_chunk(c, first) == ["INFO", "ERROR", "ERROR"]
    assert classify_chunk(c, second) == ["ERROR", "ERROR", "INFO", "INFO"]


def test_eval_kind_in_a_chunk_with_non_ascii_text() -> None:
    lines = ["Schritt 1 – Verlust 0.3", "Évaluation: eval_loss 0.2", "retrieval alone is not; eval as a word is"]
    assert kinds(lines, "\n".join(lines)) == ["train", "eval", "eval"]


def test_a_word_containing_eval_is_not_eval() -> None:
    assert kind_of("retrieval step 3") == "train"


def test_a_long_line_of_wide_characters_is_cut_by_bytes() -> None:
    """max_line_bytes is a byte limit (each piece must fit a NATS message), so a line of
    3-byte characters is cut at a third of the characters, between characters, and nothing
    is lost, also when it arrives in chunks that split a character."""
    text = "字" * 5_000 + "é" * 7
    data = (text + "\n").encode()
    lines, _ = feed_all([data[:7001], data[7001:], b""], max_chars=4096)
    assert "".join(lines) == text
    assert all(len(piece.encode()) <= 4096 for piece in lines)
    assert len(lines) == -(-len(text.encode()) // 4095)  # 4,096 bytes hold 1,365 whole characters
