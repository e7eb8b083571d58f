"""The feature cache: computed once, recomputed only for what changed, corrupt entries never used."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from msa.features import PLACEHOLDER_KEY, FeatureStore, extract_features, image_content_key


@dataclass
class FakeInfo:
    kind: str
    name: str
    dim: int
    source: str = "fake"
    weights_sha256: str = "0" * 64
    preprocessing: dict = field(default_factory=dict)
    tag: str = "a"

    def key(self) -> str:
        return f"{self.kind}-{self.name}-{self.tag}"


class FakeText(nn.Module):
    def __init__(self, tag="a"):
        super().__init__()
        self.info = FakeInfo("text", "fake_text", 4, tag=tag)
        self.seen: list[str] = []

    def tokenize(self, texts, max_length=None):
        self.seen += texts
        length = max(1, max(len(t) for t in texts))
        ids = torch.zeros(len(texts), length)
        mask = torch.zeros(len(texts), length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids[i, : len(t)] = torch.tensor([float(ord(c) % 97) for c in t]) if t else torch.zeros(0)
            mask[i, : max(1, len(t))] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, input_ids, attention_mask):
        tok = torch.stack([input_ids, input_ids * 2, input_ids.sin(), torch.ones_like(input_ids)], -1)
        m = attention_mask.bool()
        pooled = (tok * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        return pooled, tok, m


class FakeImage(nn.Module):
    image_size = 8

    def __init__(self):
        super().__init__()
        self.info = FakeInfo("image", "fake_image", 3)
        self.count = 0

    def preprocess(self, images):
        self.count += len(images)
        arrays = [np.asarray(im.convert("RGB").resize((8, 8)), dtype=np.float32) / 255 for im in images]
        return torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])

    def forward(self, x):
        return x.mean((2, 3)), x.flatten(2).transpose(1, 2)


@pytest.fixture()
def data(synthetic_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    guids = [str(i) for i in range(1, 41)]
    return root / "data", guids, tmp_path / "cache"


def test_second_run_is_served_from_the_cache(data):
    data_dir, guids, cache = data
    tb, ib = FakeText(), FakeImage()
    a = extract_features(guids, data_dir, tb, ib, cache, progress=False)
    assert a.stats["text"]["computed"] == len(set(tb.seen)) > 0 and ib.count == a.stats["image"]["computed"] > 0
    tb2, ib2 = FakeText(), FakeImage()
    b = extract_features(guids, data_dir, tb2, ib2, cache, progress=False)
    assert b.stats["text"]["computed"] == 0 and b.stats["image"]["computed"] == 0 and not tb2.seen and not ib2.count
    for m in ("text", "image"):
        assert torch.equal(a.pooled[m], b.pooled[m]) and a.pooled[m].shape[0] == len(guids)


def test_token_vectors_are_cached_for_a_later_token_fusion(data):
    """Phase 1 (pooled vectors only) caches the text's token vectors too, so that phase 2's token fusions encode no
    text again (the cold run encoded 3,287 texts twice); the pooled-only result holds no token tensors."""
    data_dir, guids, cache = data
    first = extract_features(guids, data_dir, FakeText(), None, cache, progress=False)
    assert first.tokens.get("text") is None
    tb = FakeText()
    again = extract_features(guids, data_dir, tb, None, cache, tokens=["text"], progress=False)
    assert again.stats["text"]["computed"] == 0 and not tb.seen
    fresh = extract_features(guids, data_dir, FakeText(), None, cache.parent / "fresh", tokens=["text"],
                             progress=False)
    assert all(torch.equal(a, b) for a, b in zip(again.tokens["text"], fresh.tokens["text"], strict=True))


def test_a_changed_file_recomputes_only_that_entry(data):
    data_dir, guids, cache = data
    extract_features(guids, data_dir, FakeText(), FakeImage(), cache, progress=False)
    (data_dir / "3.txt").write_text("a brand new text", encoding="utf-8")
    from PIL import Image

    Image.new("RGB", (20, 20), (1, 2, 3)).save(data_dir / "5.jpg")
    tb, ib = FakeText(), FakeImage()
    fs = extract_features(guids, data_dir, tb, ib, cache, progress=False)
    assert tb.seen == ["a brand new text"] and ib.count == 1
    assert fs.stats["text"]["computed"] == 1 and fs.stats["image"]["computed"] == 1


def test_another_backbone_gets_its_own_entries(data):
    data_dir, guids, cache = data
    extract_features(guids, data_dir, FakeText("a"), None, cache, progress=False)
    fs = extract_features(guids, data_dir, FakeText("b"), None, cache, progress=False)
    assert fs.stats["text"]["computed"] > 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_key", "empty"])
def test_corrupt_entries_are_recomputed_not_used(data, damage):
    data_dir, guids, cache = data
    ref = extract_features(guids, data_dir, None, FakeImage(), cache, progress=False)
    key, _ = image_content_key(data_dir, guids[0])
    store = FeatureStore(cache, FakeImage().info.key(), 3)
    path = store.path(key)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * len(raw))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid file stored under another entry's name
        other, _ = image_content_key(data_dir, guids[1])
        path.write_bytes(store.path(other).read_bytes())
    ib = FakeImage()
    fs = extract_features(guids, data_dir, None, ib, cache, progress=False)
    assert ib.count == 1 and fs.stats["image"]["corrupt"] == 1
    assert torch.equal(fs.pooled["image"], ref.pooled["image"])


def test_tokens_are_stored_and_padded(data):
    data_dir, guids, cache = data
    fs = extract_features(guids[:5], data_dir, FakeText(), FakeImage(), cache, tokens=True, progress=False)
    x, mask = fs.padded_tokens("text")
    assert x.shape[:2] == mask.shape and x.shape[0] == 5 and x.shape[2] == 4
    assert [int(m.sum()) for m in mask] == [t.shape[0] for t in fs.tokens["text"]]
    assert fs.tokens["image"][0].shape == (64, 3)
    again = extract_features(guids[:5], data_dir, FakeText(), FakeImage(), cache, tokens=True, progress=False)
    assert again.stats["text"]["computed"] == 0
    assert all(torch.equal(a, b) for a, b in zip(fs.tokens["text"], again.tokens["text"]))


def _loop_pad(seqs):  # the reference: one slice assignment per row
    length = max(1, max(int(s.shape[0]) for s in seqs))
    x = torch.zeros(len(seqs), length, int(seqs[0].shape[1]))
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s.float()
        mask[i, : s.shape[0]] = True
    return x, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lengths", [[5, 1, 9, 3], [0, 4, 0], [0, 0], [7]])
def test_pad_sequences_equals_a_loop_of_slice_assignments(dtype, lengths):
    from msa.features import pad_sequences

    g = torch.Generator().manual_seed(sum(lengths))
    seqs = [torch.randn(n, 6, generator=g).to(dtype) for n in lengths]
    x, mask = pad_sequences(seqs)
    ref_x, ref_mask = _loop_pad(seqs)
    assert x.dtype == torch.float32 and mask.dtype == torch.bool
    assert torch.equal(x, ref_x) and torch.equal(mask, ref_mask)


def test_broken_and_missing_images_share_the_placeholder_entry(data):
    data_dir, guids, cache = data
    (data_dir / "7.jpg").write_bytes(b"")
    (data_dir / "8.jpg").unlink()
    assert image_content_key(data_dir, "7")[0] == image_content_key(data_dir, "8")[0] == PLACEHOLDER_KEY
    ib = FakeImage()
    fs = extract_features(["7", "8", "../x"], data_dir, FakeText(), ib, cache, progress=False, check_files=False)
    assert ib.count == 1 and torch.equal(fs.pooled["image"][0], fs.pooled["image"][1])
    assert fs.pooled["text"].shape == (3, 4)


def test_onnxruntime_features_match_pytorch(synthetic_root, tmp_path):
    from msa.backbones import image_backbone

    ib = image_backbone("efficientnet_lite0")
    guids = [str(i) for i in range(1, 9)]
    eager = extract_features(guids, synthetic_root / "data", None, ib, tmp_path / "a", tokens=True,
                             progress=False, accelerate=False)
    fast = extract_features(guids, synthetic_root / "data", None, ib, tmp_path / "b", tokens=True,
                            progress=False, accelerate=True)
    assert list((tmp_path / "b" / "onnx").glob("*.onnx")), "the onnxruntime path was not taken"
    assert torch.allclose(eager.pooled["image"], fast.pooled["image"], atol=1e-3)
    assert torch.allclose(eager.tokens["image"][0].float(), fast.tokens["image"][0].float(), atol=1e-2)


@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_onnxruntime_chunks_give_the_whole_batch_bit_for_bit(tmp_path, n):
    """A batch runs through onnxruntime in chunks of ORT_CHUNK images: the same pooled and patch features as one
    call on the whole batch (what the feature cache held before)."""
    from msa import onnx_accel
    from msa.backbones import image_backbone

    ib = image_backbone("efficientnet_lite0")
    run = onnx_accel.fast_image_forward(ib, tmp_path, threads=1)
    assert run is not ib, "the onnxruntime path was not taken"
    x = torch.randn(n, 3, ib.image_size, ib.image_size, generator=torch.Generator().manual_seed(n))
    pooled, patches = run(x)
    session = next(v for k, v in onnx_accel._SESSIONS.items() if k[0].startswith(str(tmp_path)))
    whole = session.run(None, {"pixel_values": x.numpy()})
    assert onnx_accel.ORT_CHUNK < 9 and pooled.shape[0] == patches.shape[0] == n
    assert torch.equal(pooled, torch.from_numpy(whole[0])) and torch.equal(patches, torch.from_numpy(whole[1]))
    onnx_accel.drop_sessions()


def test_text_features_for_strings_match_the_posts_and_are_cached(data):
    from msa.features import text_features_for

    data_dir, guids, cache = data
    fs = extract_features(guids[:4], data_dir, FakeText(), None, cache, progress=False)
    raw = [(data_dir / f"{g}.txt").read_text(encoding="utf-8") for g in guids[:4]]
    tb = FakeText()
    pooled, _ = text_features_for(raw, tb, cache)
    assert torch.equal(pooled, fs.pooled["text"]) and not tb.seen  # same normalisation, same cache entries
    pooled, toks = text_features_for(["a photo showing: a dog"], tb, cache, tokens=True)
    assert pooled.shape == (1, 4) and toks[0].shape[1] == 4 and tb.seen


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_background_decoding_gives_the_inline_features_in_order(data, workers):
    data_dir, guids, cache = data
    inline = extract_features(guids, data_dir, None, FakeImage(), cache / "inline", batch_size=4, progress=False,
                              decode_workers=0)
    ib = FakeImage()
    ahead = extract_features(guids, data_dir, None, ib, cache / f"ahead{workers}", batch_size=4, progress=False,
                             decode_workers=workers)
    assert ib.count == ahead.stats["image"]["computed"] > 8  # several batches, each decoded once
    assert torch.equal(inline.pooled["image"], ahead.pooled["image"])


def test_prefetch_keeps_order_and_reraises_a_workers_error():
    import threading

    from msa.features import _prefetched, default_decode_workers

    threads = set()

    def prepare(chunk):
        threads.add(threading.current_thread().name)
        if chunk == [5]:
            raise ValueError("bad batch 5")
        return chunk[0] * 10

    chunks = [[i] for i in range(5)]
    for workers in (0, 1, 2, 7):
        assert list(_prefetched(prepare, chunks, workers)) == [0, 10, 20, 30, 40]
    assert any(name.startswith("decode") for name in threads) and threading.current_thread().name in threads
    got = []
    with pytest.raises(ValueError, match="bad batch 5"):
        for value in _prefetched(prepare, chunks + [[5], [6]], 2):
            got.append(value)
    assert got == [0, 10, 20, 30, 40]
    assert 1 <= default_decode_workers() <= 4


def test_cached_backbones_load_only_when_a_feature_must_be_computed(data, monkeypatch):
    """A phase whose features are all cached loads no weights: the info memo of the cache says what the backbone
    is. A post that is not cached loads it, and its features are the eager backbone's; the ONNX image path stays."""
    from msa import backbones as bb
    from msa.experiment import load_backbones

    data_dir, guids, cache = data
    first_t, first_i = load_backbones("minilm", "efficientnet_lite0", None, cache)
    assert not isinstance(first_t, bb.LazyBackbone) and not isinstance(first_i, bb.LazyBackbone)
    # the image's record, the text's under its arguments and under them spelled out (pooling, max_length)
    assert sorted(p.name.split("-")[0] for p in (cache / bb.INFO_MEMO_DIR).glob("*.json")) == ["image", "text", "text"]
    a = extract_features(guids[:30], data_dir, first_t, first_i, cache, progress=False)

    calls = []
    real = bb.text_backbone
    monkeypatch.setattr(bb, "text_backbone", lambda *a, **k: calls.append(a) or real(*a, **k))
    tb, ib = load_backbones("minilm", "efficientnet_lite0", None, cache)
    assert isinstance(tb, bb.LazyBackbone) and isinstance(ib, bb.LazyBackbone)
    assert tb.info.key() == first_t.info.key() and ib.info.as_dict() == first_i.info.as_dict()
    b = extract_features(guids[:30], data_dir, tb, ib, cache, progress=False)
    assert not tb.loaded and not ib.loaded and not calls  # all cached: nothing loaded
    assert all(torch.equal(a.pooled[m], b.pooled[m]) for m in ("text", "image"))

    c = extract_features(guids, data_dir, tb, ib, cache, progress=False)  # 10 posts not cached yet
    assert tb.loaded and ib.loaded and c.stats["text"]["computed"] > 0 and c.stats["image"]["computed"] > 0
    assert list((cache / "onnx").glob("*.onnx")), "a lazy image backbone must still take the onnxruntime path"
    eager = extract_features(guids, data_dir, real("minilm"), bb.image_backbone("efficientnet_lite0"),
                             cache.parent / "eager", progress=False)
    for m in ("text", "image"):
        torch.testing.assert_close(c.pooled[m], eager.pooled[m], atol=1e-4, rtol=0)

    pair = load_backbones("minilm", None, None, cache)[0]
    assert isinstance(pair, bb.LazyBackbone) and pair.tokenize(["hi"])["input_ids"].shape[0] == 1 and pair.loaded


def test_a_changed_model_folder_is_loaded_again_not_taken_from_the_memo(tmp_path):
    from msa import backbones as bb
    from tests.tiny_models import tiny_bert

    folder = tiny_bert(tmp_path / "bert")
    cache = tmp_path / "cache"
    first = bb.cached_backbone("text", str(folder), cache)
    assert isinstance(bb.cached_backbone("text", str(folder), cache), bb.LazyBackbone)
    assert not isinstance(bb.cached_backbone("text", str(folder), cache, pooling="cls"), bb.LazyBackbone)
    weights = folder / "model.safetensors"
    st = weights.stat()
    import os

    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the weights were replaced
    again = bb.cached_backbone("text", str(folder), cache)
    assert not isinstance(again, bb.LazyBackbone) and again.info.key() == first.info.key()
    group = bb.cached_backbone("text", f"{folder}+minilm", cache)
    assert isinstance(group, bb.BackboneGroup) and isinstance(group.members[0], bb.LazyBackbone)
    assert group.info.dim == first.info.dim + 384
    with pytest.raises(bb.BackboneError, match="does not exist"):
        bb.cached_backbone("text", str(tmp_path / "nowhere"), cache)


def test_the_memo_serves_default_arguments_given_as_none_or_spelled_out(tmp_path):
    """A stage leaves pooling to the default (None) and predict_test passes what a checkpoint recorded (pooling and
    max_length spelled out): both find the record the first load wrote, so neither loads the weights again."""
    from msa import backbones as bb
    from tests.tiny_models import tiny_bert

    folder = tiny_bert(tmp_path / "bert")
    cache = tmp_path / "cache"
    first = bb.cached_backbone("text", str(folder), cache, pooling=None)
    assert not isinstance(first, bb.LazyBackbone)
    pre = first.info.preprocessing
    for kw in ({}, {"pooling": None}, {"pooling": pre["pooling"], "max_length": pre["max_length"]}):
        again = bb.cached_backbone("text", str(folder), cache, **kw)
        assert isinstance(again, bb.LazyBackbone), kw
        assert again.info.key() == first.info.key()
    other = "cls" if pre["pooling"] != "cls" else "mean"
    assert not isinstance(bb.cached_backbone("text", str(folder), cache, pooling=other), bb.LazyBackbone)
    assert not isinstance(bb.cached_backbone("text", str(folder), cache, pooling=pre["pooling"],
                                             max_length=pre["max_length"] // 2), bb.LazyBackbone)


def test_text_and_image_extracted_at_once_give_the_sequential_features(data, monkeypatch):
    """Two lanes (text and image at once, one thread each, a lane helping the other when its kind is done) give
    bit-identical features to one modality after the other, and the cache serves them afterwards."""
    from msa import features as feats
    from msa.backbones import image_backbone, text_backbone

    data_dir, guids, cache = data
    tb, ib = text_backbone("minilm"), image_backbone("efficientnet_lite0")
    lanes = []
    real = feats._overlapped
    monkeypatch.setattr(feats, "_cores", lambda: 2)
    monkeypatch.setattr(feats, "_overlapped", lambda *a: lanes.append(1) or real(*a))
    seq = extract_features(guids, data_dir, tb, ib, cache.parent / "seq", tokens=["text"], progress=False,
                           batch_size=4, overlap=False)
    assert not lanes
    both = extract_features(guids, data_dir, tb, ib, cache, tokens=["text"], progress=False, batch_size=4)
    assert lanes == [1] and both.stats["text"]["computed"] > 0 and both.stats["image"]["computed"] > 0
    for m in ("text", "image"):
        assert torch.equal(seq.pooled[m], both.pooled[m])
    assert all(torch.equal(a, b) for a, b in zip(seq.tokens["text"], both.tokens["text"], strict=True))
    again = extract_features(guids, data_dir, tb, ib, cache, progress=False)
    assert again.stats["text"]["computed"] == again.stats["image"]["computed"] == 0 and lanes == [1]
    assert torch.equal(again.pooled["image"], seq.pooled["image"])


def test_a_failing_lane_is_an_error_of_the_caller(data, monkeypatch):
    from msa import features as feats

    data_dir, guids, cache = data
    tb, ib = FakeText(), FakeImage()
    monkeypatch.setattr(feats, "_cores", lambda: 2)

    def broken(images):
        raise RuntimeError("decoder exploded")

    ib.preprocess = broken
    with pytest.raises(RuntimeError, match="decoder exploded"):
        extract_features(guids, data_dir, tb, ib, cache, progress=False, batch_size=4)


def test_one_post_keeps_the_onnx_session_and_skips_the_memory_release(data, monkeypatch):
    """Serving post after post: the onnxruntime session is created once per process (a lane asks for its own), and
    the garbage collection + malloc_trim of a big extraction is skipped for a handful of posts."""
    import onnxruntime as ort

    from msa import features as feats
    from msa import onnx_accel
    from msa.backbones import image_backbone

    data_dir, guids, cache = data
    ib = image_backbone("efficientnet_lite0")
    created, released = [], []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: created.append(1) or real(*a, **k))
    monkeypatch.setattr(feats, "release_memory", lambda: released.append(1))
    onnx_accel.drop_sessions()
    for g in guids[:3]:
        extract_features([g], data_dir, None, ib, cache, progress=False)
    assert len(created) == 1 and not released
    onnx_accel.fast_image_forward(ib, cache, reuse=False)
    assert len(created) == 2
    monkeypatch.setattr(feats, "RELEASE_AFTER", 5)
    extract_features(guids[3:20], data_dir, None, ib, cache, progress=False)
    assert released == [1]
    onnx_accel.drop_sessions()


def test_a_text_group_overlaps_with_the_images_and_gives_the_sequential_features(data, monkeypatch, tmp_path):
    """The final recipe's case: a text group (each member cached on its own) and one image backbone, at once."""
    from msa import features as feats
    from msa.backbones import BackboneGroup, image_backbone, text_backbone
    from tests.tiny_models import tiny_bert

    data_dir, guids, cache = data
    group = BackboneGroup([text_backbone("minilm"), text_backbone(str(tiny_bert(tmp_path / "bert")))])
    ib = image_backbone("efficientnet_lite0")
    lanes = []
    real = feats._overlapped
    monkeypatch.setattr(feats, "_cores", lambda: 2)
    monkeypatch.setattr(feats, "_overlapped", lambda *a: lanes.append(len(a[0])) or real(*a))
    seq = extract_features(guids, data_dir, group, ib, tmp_path / "seq", progress=False, batch_size=8, overlap=False)
    both = extract_features(guids, data_dir, group, ib, cache, progress=False, batch_size=8)
    assert lanes == [2] and both.stats["text"]["members"] == seq.stats["text"]["members"]
    assert both.pooled["text"].shape[1] == group.info.dim and both.backbones["text"]["name"] == group.info.name
    for m in ("text", "image"):
        assert torch.equal(seq.pooled[m], both.pooled[m])


def test_cache_entries_skip_the_fsync_that_results_get(tmp_path, monkeypatch):
    # a cache entry is checked when read (corrupt ones are recomputed, test above), so it is written without the
    # ~1 ms fsync per file; a result file (write_json) still gets one
    import msa.io

    synced = []
    real = msa.io.os.fsync
    monkeypatch.setattr(msa.io.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    store = FeatureStore(tmp_path / "cache", "fake-key", 3)
    store.save("abc", torch.ones(3))
    assert synced == [] and torch.equal(store.load("abc"), torch.ones(3))
    msa.io.write_json(tmp_path / "r.json", {"a": 1})
    assert len(synced) == 1
    assert not list((tmp_path / "cache").rglob(".*.tmp"))
