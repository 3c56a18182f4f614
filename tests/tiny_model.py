"""A tiny randomly initialised BERT (2 layers, hidden 32) with the bundled MiniLM tokenizer, saved to a folder.

Built from a fixed seed so losses recorded in the tests are reproducible; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_bert(folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from transfer.experiment.encoders import resolve_model

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    model = BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
