"""diffusion-pipe: the TOML files from seed 000's request, what is refused, the output parser,
and the TensorBoard reader."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from agent.trainers.diffusion_pipe import DiffusionPipeParser
from agent.trainers.parsing.tfevents import EventFileReader
from shared.diffusion_pipe_config import ConfigError, build_configs
from shared.jobspec import DiffusionPipeJob

sys.path.insert(0, str(Path(__file__).parents[1] / "trainers"))
from tfevents_writer import record, scalar_event

SEED_DATASET = {"resolutions": [512], "directories": [{"path": "/data/train", "num_repeats": 5}]}
SEED_CONFIG = {"epochs": 10, "micro_batch_size_per_gpu": 1, "optimizer": {"type": "adamw_optimi", "lr": 5e-5}}


def test_seed_000_request_becomes_both_toml_files() -> None:
    main, data = build_configs("flux", SEED_DATASET, SEED_CONFIG, "/out", "/run/dataset.toml")
    assert (main["output_dir"], main["dataset"], main["epochs"], main["micro_batch_size_per_gpu"]) == (
        "/out", "/run/dataset.toml", 10, 1)
    assert main["save_every_n_epochs"] == 1  # diffusion-pipe asserts one save_every_n_* is set
    assert main["model"] == {"type": "flux", "dtype": "bfloat16"}
    assert main["adapter"] == {"type": "lora", "rank": 32, "dtype": "bfloat16"}
    assert main["optimizer"]["type"] == "adamw_optimi" and main["optimizer"]["lr"] == 5e-5
    assert data == {"resolutions": [512], "directory": [{"num_repeats": 5, "path": "/data/train"}]}
    # `directory` is an array of tables ([[directory]]); tomli-w may write short ones inline,
    # which TOML readers (diffusion-pipe's included) read the same.
    assert tomllib.loads(tomli_w.dumps(data)) == data and tomllib.loads(tomli_w.dumps(main)) == main
    full, _ = build_configs("wan", SEED_DATASET, {**SEED_CONFIG, "adapter": None, "save_every_n_steps": 50}, "/o", "/d")
    assert "adapter" not in full and "save_every_n_epochs" not in full


@pytest.mark.parametrize(
    ("model_type", "dataset", "config", "key"),
    [
        ("flux-9000", SEED_DATASET, SEED_CONFIG, "model_type"),
        (
            "flux",
            SEED_DATASET,
            {**SEED_CONFIG, "adapter": {"type": "lora", "rank": 16, "alpha": 16}},
            "config.adapter.alpha",
        ),
        ("flux", SEED_DATASET, {**SEED_CONFIG, "adapter": {"type": "dora"}}, "config.adapter.type"),
        ("flux", SEED_DATASET, {"micro_batch_size_per_gpu": 1}, "config.epochs"),
        ("flux", SEED_DATASET, {**SEED_CONFIG, "output_dir": "/x"}, "config.output_dir"),
        ("flux", SEED_DATASET, {**SEED_CONFIG, "model": {"dtype": "int4"}}, "config.model.dtype"),
        ("flux", SEED_DATASET, {**SEED_CONFIG, "warmup_steps": None}, "config.warmup_steps"),
        ("flux", SEED_DATASET, {**SEED_CONFIG, "eval_datasets": ["eval.toml"]}, "config.eval_datasets"),
        ("flux", {"resolutions": [512]}, SEED_CONFIG, "dataset.directories"),
        ("flux", {"directories": [{"num_repeats": 1}]}, SEED_CONFIG, "dataset.directories[0].path"),
    ],
)
def test_what_diffusion_pipe_would_reject_is_refused_naming_the_key(model_type, dataset, config, key) -> None:
    with pytest.raises(ConfigError) as err:
        build_configs(model_type, dataset, config, "/o", "/d")
    assert err.value.key == key


class Sink:
    def __init__(self) -> None:
        self.points, self.progress_calls, self.lines, self.checkpoints = [], [], [], []

    def logs(self, stream, texts, levels, kinds) -> None:
        self.lines += list(zip(texts, levels, strict=False))

    def metrics(self, step, epoch, values) -> None:
        self.points.append((step, epoch, dict(values)))

    def progress(self, **kw) -> None:
        self.progress_calls.append(kw)

    def checkpoint(self, path, step) -> None:
        self.checkpoints.append((Path(path).name, step))


def test_the_parser_reads_steps_epochs_and_the_end(tmp_path: Path) -> None:
    spec = DiffusionPipeJob(model_type="flux", dataset=SEED_DATASET, config={"epochs": 3})
    parser, sink = DiffusionPipeParser(spec, tmp_path), Sink()
    lines = [
        "[2026-07-30 09:16:29,681] [INFO] [logging.py:123:log_dist] [Rank 0] step=1, skipped=0, lr=[1e-06], mom=[0.0]",
        "steps: 1 loss: 0.5994 iter time (s): 3.162 samples/sec: 0.316",
        "steps: 2 loss: nan iter time (s): 3.100 samples/sec: 0.322",
        "Started new epoch: 2",
        "steps: 3 loss: 0.4 dpo_loss: 0.2000 iter time (s): 3.0 samples/sec: 0.3",
        "TRAINING COMPLETE!",
    ]
    parser.feed("stdout", lines, None, sink)
    assert sink.points[0] == (1, 1.0, {"lr": 1e-06})
    assert sink.points[1][2]["loss"] == 0.5994 and sink.points[1][2]["samples_per_s"] == 0.316
    assert sink.points[3][:2] == (3, 2.0) and sink.points[3][2]["dpo_loss"] == 0.2
    # Before epoch 2 the total is unknown; then it is epochs x the steps of epoch 1, estimated.
    assert sink.progress_calls[0]["total_steps"] is None
    assert (sink.progress_calls[-1]["total_steps"], sink.progress_calls[-1]["estimated"]) == (6, True)
    assert parser.completed and [ln for ln, _ in sink.lines] == lines


def test_checkpoints_and_eval_losses_come_from_the_run_dir(tmp_path: Path) -> None:
    spec = DiffusionPipeJob(model_type="flux", dataset=SEED_DATASET, config={"epochs": 2, "max_steps": 8})
    run = tmp_path / "20261122_12-00-00"
    run.mkdir()
    (run / "epoch1").mkdir()
    (run / "global_step4").mkdir()
    events = run / "events.out.tfevents.1.host"
    events.write_bytes(
        record(scalar_event("eval/loss", 0.25, 4, 1.0)) + record(scalar_event("train/loss", 0.9, 4, 1.0))
    )
    parser, sink = DiffusionPipeParser(spec, tmp_path), Sink()
    parser.feed("stdout", ["steps: 4 loss: 0.3 iter time (s): 1.0 samples/sec: 1.0"], None, sink)
    assert (sink.progress_calls[-1]["total_steps"], sink.progress_calls[-1]["estimated"]) == (8, False)
    parser.poll(sink)
    parser.poll(sink)
    assert sorted(sink.checkpoints) == [("epoch1", 4), ("global_step4", 4)]
    assert (4, None, {"eval/loss": 0.25}) in sink.points
    assert not any("train/loss" in p[2] for p in sink.points)  # stdout has it already


def test_the_event_reader_waits_for_a_record_still_being_written(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.x"
    first, second = record(scalar_event("a", 1.5, 1, 0.0)), record(scalar_event("b", 2.5, 2, 0.0))
    path.write_bytes(first + second[:10])
    reader = EventFileReader(path)
    assert [(s.tag, s.step, s.value) for s in reader.read()] == [("a", 1, 1.5)]
    path.write_bytes(first + second)
    assert [(s.tag, s.step, s.value) for s in reader.read()] == [("b", 2, 2.5)]
    assert reader.read() == []


def test_the_launch_pins_gpus_by_environment_and_resumes_from_a_run_dir(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.trainers.base import LaunchContext
    from agent.trainers.diffusion_pipe import DiffusionPipeAdapter

    checkout = tmp_path / "diffusion-pipe"
    checkout.mkdir()
    (checkout / "train.py").write_text("")
    bin_dir = Path(__file__).parents[1] / "trainers" / "bin"
    monkeypatch.setenv("PATH", str(bin_dir))  # deepspeed comes from the agent's PATH
    run_dir = tmp_path / "job" / "2"
    run_dir.mkdir(parents=True)
    ctx = LaunchContext(host="h", job_id="job_20261122_120000_abcdef", attempt=2, run_dir=run_dir,
                        gpu_ids=[3], python=sys.executable, job_dir=tmp_path / "job",
                        options={"diffusion_pipe_dir": str(checkout)})
    spec = DiffusionPipeJob(model_type="flux", dataset=SEED_DATASET, config=SEED_CONFIG, gpu_id=3,
                            resume_from_checkpoint="20250212_07-06-40", env={"PATH": str(bin_dir)})
    launch = DiffusionPipeAdapter().build_launch(spec, ctx)
    assert launch.argv[0] == str(bin_dir / "deepspeed") and launch.cwd == checkout
    assert not any(a.startswith("--num_gpus") or a.startswith("--include") for a in launch.argv)
    assert launch.argv[-2:] == ["--resume_from_checkpoint", "20250212_07-06-40"]
    main = tomllib.loads(launch.files[run_dir / "diffusion_pipe.toml"].decode())
    assert main["output_dir"] == str(tmp_path / "job" / "output")  # shared by the job's attempts
    assert spec.gpu_ids == [3]  # seed 000's gpu_id pins the GPU; CUDA_VISIBLE_DEVICES comes from it
    latest = DiffusionPipeJob(model_type="flux", dataset=SEED_DATASET, config=SEED_CONFIG,
                              resume_from_checkpoint=True, env={"PATH": str(bin_dir)})
    assert DiffusionPipeAdapter().build_launch(latest, ctx).argv[-1] == "--resume_from_checkpoint"
