"""The toy task: emit digits whose sum hits a target. Verifiable reward, learnable in minutes on CPU.

Prompts share a long instruction prefix (longer than one 128-token vLLM CPU block, so prefix
caching has something to reuse) followed by ``target : D D =``. The tokenizer is trained on the
fly with digits kept as single tokens, so the reward can read digits straight from token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

INSTRUCTION = "you are a careful assistant . write digits whose sum equals the target . "
PREFIX_REPEATS = 10  # 140 tokens: more than one 128-token vLLM CPU block
RESPONSE_TOKENS = 8
TARGETS = range(15, 31)


@dataclass
class Task:
    tokenizer: object  # transformers.PreTrainedTokenizerFast
    prefix_ids: list[int]
    digit_value: dict[int, int]  # token id -> digit

    def prompt_ids(self, target: int) -> list[int]:
        suffix = self.tokenizer(f"target : {target // 10} {target % 10} =", add_special_tokens=False)
        return self.prefix_ids + list(suffix["input_ids"])

    def rewards(self, targets: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """1 at the exact sum, falling linearly to 0 twenty away; non-digit tokens add nothing."""
        values = torch.tensor([[self.digit_value.get(int(t), 0) for t in row] for row in responses])
        sums = values.sum(dim=1).double()
        return (1.0 - (sums - targets.double()).abs() / 20.0).clamp_min(0.0)


def build_tokenizer(directory: Path) -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    )
    trainer = trainers.WordLevelTrainer(special_tokens=["<s>", "</s>", "<pad>", "<unk>"])
    corpus = [INSTRUCTION, "target : 0 1 2 3 4 5 6 7 8 9 ="]
    tokenizer.train_from_iterator(corpus, trainer)
    from tokenizers import decoders

    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(directory)
    return fast


def build_task(directory: Path) -> Task:
    tokenizer = build_tokenizer(directory)
    prefix = tokenizer(INSTRUCTION * PREFIX_REPEATS, add_special_tokens=False)["input_ids"]
    digits = {tokenizer.convert_tokens_to_ids(str(d)): d for d in range(10)}
    return Task(tokenizer, list(prefix), digits)
