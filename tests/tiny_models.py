"""Tiny randomly initialised Hugging Face model folders for tests (a few hundred KB each, built in well under 1 s).

Each builder writes a complete folder the way ``save_pretrained`` does (config.json, model.safetensors and the
tokenizer / image-processor files) and returns it. ``seed`` fixes the random weights, so two folders built with
different seeds differ only in their weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from msa.backbones import quiet_transformers  # re-exported for the tests

WORDS = ("the a an is was it this that i you we they good great happy love nice fun bad sad awful hate angry "
         "terrible day movie food game team news photo today not very so").split()
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", *WORDS]


def _save(model, folder: Path) -> None:
    with quiet_transformers():
        model.save_pretrained(str(folder))


def tiny_bert(folder: str | Path, seed: int = 0) -> Path:
    """BERT, hidden 32, 2 layers, 2 heads, a 40-word uncased WordPiece vocabulary (vocab.txt + tokenizer.json)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n", encoding="utf-8")
    with quiet_transformers():
        BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64).save_pretrained(
            str(folder))
    config = BertConfig(vocab_size=len(BERT_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, architectures=["BertModel"])
    torch.manual_seed(seed)
    _save(BertModel(config), folder)
    return folder


def tiny_swinv2(folder: str | Path, seed: int = 0) -> Path:
    """SwinV2 on 32x32 images: patch 4, window 2, embed 16, depths [1, 1] -> 16 final tokens of width 32."""
    from transformers import Swinv2Config, Swinv2Model, ViTImageProcessor

    folder = Path(folder)
    config = Swinv2Config(image_size=32, patch_size=4, window_size=2, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                          architectures=["Swinv2Model"])
    torch.manual_seed(seed)
    _save(Swinv2Model(config), folder)
    with quiet_transformers():
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                          image_std=[0.229, 0.224, 0.225], resample=3).save_pretrained(str(folder))
    return folder


def tiny_vit(folder: str | Path, seed: int = 0, num_labels: int = 3) -> Path:
    """ViTForImageClassification on 32x32 images, patch 8 (16 patches + CLS, width 32), ``num_labels`` classes.

    Like real ViT classifiers, the folder has no pooler weights: the backbone must fall back to the CLS token.
    """
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = Path(folder)
    labels = ["negative", "neutral", "positive"] if num_labels == 3 else [f"class_{i}" for i in range(num_labels)]
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=48, num_labels=num_labels, id2label=dict(enumerate(labels)),
                       label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(seed)
    _save(ViTForImageClassification(config), folder)
    with quiet_transformers():
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


def tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """CLIP with tiny text (width 24) and vision (width 32, 32x32 images, patch 8) towers, a character-level BPE
    tokenizer and a CLIP image processor (shorter side 32, centre crop 32)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in [*letters, *(c + "</w>" for c in letters), *".,!?", *(c + "</w>" for c in ".,!?")]:
        vocab[piece] = len(vocab)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    _save(CLIPModel(config), folder)
    with quiet_transformers():
        CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32).save_pretrained(str(folder))
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
            str(folder))
    return folder
