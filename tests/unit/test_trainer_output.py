"""Trainer output parsing, line by line, on the exact formats of reference/trainers.md."""

from __future__ import annotations

from pathlib import Path

from agent.trainers.hf import flag_value
from agent.trainers.parsing.trainer_output import (
    global_step_of,
    metrics_of,
    parse_bar,
    parse_log_dict,
)
from agent.trainers.parsing.trainer_parser import TrainerParser
from agent.trainers.swift import master_port, sft_argv
from shared.jobspec import SwiftJob

HF4 = "{'loss': 2.1234, 'grad_norm': 1.583, 'learning_rate': 4.8e-05, 'epoch': 0.08}"
HF5 = "{'loss': '2.123', 'grad_norm': '1.583', 'learning_rate': '4.8e-05', 'epoch': '0.08'}"
SWIFT3 = ("{'loss': 1.23456789, 'grad_norm': 0.98765432, 'learning_rate': 9.5e-05, 'token_acc': 0.71234567, "
          "'epoch': 0.12, 'global_step/max_steps': '5/42', 'percentage': '11.90%', 'elapsed_time': '1m 2s', "
          "'remaining_time': '7m 40s', 'memory(GiB)': 17.52, 'train_speed(iter/s)': 0.080645}")
SWIFT4 = ("{'loss': '1.461', 'grad_norm': '1.705', 'learning_rate': '1e-05', 'token_acc': '0.6399', 'epoch': '0.016', "
          "'global_step/max_steps': '1/189', 'elapsed_time': '2m 41s', 'remaining_time': '8h 25m 20s', "
          "'memory(GiB)': '67.95', 'train_speed(s/it)': '161.3'}")
SUMMARY = ("{'train_runtime': 123.4567, 'train_samples_per_second': 12.345, 'train_steps_per_second': 1.543, "
           "'train_loss': 1.8765, 'epoch': 1.0}")


class Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []
        self.points: list[tuple[int | None, float | None, dict]] = []
        self.progress_calls: list[dict] = []
        self.checkpoints: list[tuple[str, int | None]] = []

    def logs(self, stream, texts, levels, kinds) -> None:
        self.lines += list(zip(texts, levels, kinds, strict=False))

    def metrics(self, step, epoch, values) -> None:
        self.points.append((step, epoch, dict(values)))

    def progress(self, **kw) -> None:
        self.progress_calls.append(kw)

    def checkpoint(self, path, step) -> None:
        self.checkpoints.append((path, step))


def test_logged_dicts_of_every_version_become_numbers() -> None:
    assert metrics_of(parse_log_dict(HF4)) == {"loss": 2.1234, "grad_norm": 1.583, "learning_rate": 4.8e-05}
    assert metrics_of(parse_log_dict(HF5)) == {"loss": 2.123, "grad_norm": 1.583, "learning_rate": 4.8e-05}
    swift3 = parse_log_dict(SWIFT3)
    assert metrics_of(swift3) == {"loss": 1.23456789, "grad_norm": 0.98765432, "learning_rate": 9.5e-05,
                                  "token_acc": 0.71234567, "memory(GiB)": 17.52, "train_speed(iter/s)": 0.080645}
    assert global_step_of(swift3) == (5, 42)
    assert metrics_of(parse_log_dict(SWIFT4))["train_speed(s/it)"] == 161.3
    assert global_step_of(parse_log_dict(SWIFT4)) == (1, 189)
    assert parse_log_dict("{'a': __import__('os').system('x')}") is None  # literals only
    assert parse_log_dict("step 3 loss 0.2") is None


def test_tqdm_bars() -> None:
    bar = parse_bar("Train:  83%|██████████████████████▊        | 10/12 [00:42<00:06,  3.14s/it]")
    assert (bar.desc, bar.n, bar.total, bar.remaining_s) == ("Train", 10, 12, 6.0)
    assert abs(bar.rate_steps_s - 1 / 3.14) < 1e-9
    plain = parse_bar(" 42%|████▏     | 5/12 [00:01<00:02, 25.30it/s]")
    assert (plain.desc, plain.n, plain.total, plain.rate_steps_s) == ("", 5, 12, 25.3)
    assert parse_bar("Val: 100%|█████| 1/1 [00:00<00:00, 28.85it/s]").desc == "Val"
    assert parse_bar("  0%|          | 0/12 [00:00<?, ?it/s]").remaining_s is None


def test_plain_trainer_metrics_take_the_bar_step_rounded_to_logging_steps() -> None:
    parser, sink = TrainerParser([], logging_steps=2), Sink()
    parser.feed("stderr", [], "  8%|▊         | 1/12 [00:00<00:01, 9.0it/s]", sink)
    parser.feed("stdout", [HF5], None, sink)  # the bar lagged: the dict is step 2's
    parser.feed("stderr", [], " 33%|███▎      | 4/12 [00:00<00:01, 9.0it/s]", sink)
    parser.feed("stdout", [HF4], None, sink)
    parser.feed("stderr", ["100%|██████████| 12/12 [00:01<00:00, 9.0it/s]"], None, sink)
    parser.feed("stdout", [SUMMARY], None, sink)
    assert [(s, e) for s, e, _ in sink.points] == [(2, 0.08), (4, 0.08), (12, 1.0)]
    assert sink.progress_calls[-1]["step"] == 12 and sink.progress_calls[-1]["total_steps"] == 12
    assert all("%|" not in text for text, _, _ in sink.lines)  # bars are progress, never log lines
    assert [t for t, _, _ in sink.lines] == [HF5, HF4, SUMMARY]


def test_an_eval_bar_without_a_description_does_not_move_progress() -> None:
    parser, sink = TrainerParser([]), Sink()
    parser.feed("stderr", [], " 50%|█████     | 6/12 [00:01<00:01, 9.0it/s]", sink)
    parser.feed("stderr", [], " 50%|█████     | 2/4 [00:00<00:00, 9.0it/s]", sink)
    assert [c["step"] for c in sink.progress_calls] == [6]
    parser.feed("stdout", ["{'eval_loss': 0.5, 'epoch': 0.5}"], None, sink)
    assert sink.points == [(6, 0.5, {"eval_loss": 0.5})] and sink.lines[-1][2] == "eval"


def test_swift_steps_come_from_global_step_and_checkpoints_from_disk(tmp_path: Path) -> None:
    parser, sink = TrainerParser([tmp_path], logging_steps=5), Sink()
    parser.feed("stdout", [SWIFT3], None, sink)
    assert sink.points[0][0] == 5 and sink.progress_calls[-1] == {"step": 5, "total_steps": 42, "epoch": 0.12}
    parser.feed("stderr", ["[INFO:swift] Saving model checkpoint to /abs/out/checkpoint-5"], None, sink)
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10.tmp").write_text("not a dir")
    parser.poll(sink)
    parser.poll(sink)
    assert sink.checkpoints == [("/abs/out/checkpoint-5", 5), (str(tmp_path / "checkpoint-10"), 10)]
    assert sink.lines[-1][1] == "INFO"


def test_swift_command_line_from_seed_002_defaults() -> None:
    spec = SwiftJob(model_path="Qwen/Qwen2.5-VL-7B-Instruct", data_path="AI-ModelScope/coco#20000")
    argv = sft_argv("/usr/bin/swift", spec, Path("/w/job/output"))
    flags = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert argv[:2] == ["/usr/bin/swift", "sft"]
    assert flags["--model"] == "Qwen/Qwen2.5-VL-7B-Instruct" and flags["--dataset"] == "AI-ModelScope/coco#20000"
    assert flags["--add_version"] == "false" and flags["--output_dir"] == "/w/job/output"
    assert (flags["--num_train_epochs"], flags["--learning_rate"], flags["--lora_rank"], flags["--lora_alpha"]) == (
        "1",
        "0.0001",
        "16",
        "32",
    )
    assert (flags["--vit_lr"], flags["--aligner_lr"], flags["--gradient_accumulation_steps"]) == ("1e-05", "1e-05", "4")
    assert (flags["--save_steps"], flags["--save_total_limit"], flags["--logging_steps"], flags["--max_length"]) == (
        "100",
        "2",
        "5",
        "8192",
    )
    assert (flags["--train_type"], flags["--torch_dtype"], flags["--save_only_model"]) == ("lora", "bfloat16", "true")
    assert 20000 <= master_port("job_20261122_120000_abcdef") < 40000
    assert flag_value(["--output_dir", "a", "--output_dir=b"], "--output_dir") == "b"
