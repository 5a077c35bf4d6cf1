"""A real, tiny transformers Trainer run on the CPU: a 2-layer GPT-2 built from a config (no
download) learns a repeating token pattern. Used by the `hf` adapter's end-to-end test."""

import argparse
import os

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


class Pattern(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        ids = torch.tensor([(i + k) % 16 for k in range(16)])
        return {"input_ids": ids, "labels": ids}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir", default="out")
    p.add_argument("--max_steps", type=int, default=12)
    # TINY_LOGGING_STEPS: logging_steps set in the script's own code, not on its command line.
    p.add_argument("--logging_steps", type=int, default=int(os.environ.get("TINY_LOGGING_STEPS", "2")))
    p.add_argument("--save_steps", type=int, default=6)
    # An absurd one (1e30) makes the loss nan within a few steps: the NaN watchdog's test.
    p.add_argument("--learning_rate", type=float, default=1e-2)
    a = p.parse_args()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    args = TrainingArguments(
        output_dir=a.output_dir, max_steps=a.max_steps, logging_steps=a.logging_steps,
        save_steps=a.save_steps, per_device_train_batch_size=8, learning_rate=a.learning_rate,
        report_to=[], use_cpu=True, dataloader_num_workers=0,
        logging_nan_inf_filter=False,  # a nan loss is logged as nan (not replaced): what users see
    )
    Trainer(model=model, args=args, train_dataset=Pattern()).train()


if __name__ == "__main__":
    main()
