from __future__ import annotations

from agent.lines import LevelClassifier, LineSplitter, kind_of


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
