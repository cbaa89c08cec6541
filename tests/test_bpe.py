"""The Rust BPE equals the Python reference: same merges, same ids; encode/decode round-trips."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nanigpt_rs
from nanigpt.data.bpe import (
    EOT,
    GPT2_PATTERN,
    Tokenizer,
    TokenizerError,
    split_chunks,
    train_bpe,
)

# Python's `regex` module ships newer Unicode tables (17.0) than Rust's regex-syntax (16.0): a code
# point assigned only in 17.0 is a letter to one and not the other. Random text therefore draws from
# code points assigned in this Python's own unicodedata (14.0 on 3.11), which both agree on.
assigned_text = st.text(alphabet=st.characters(exclude_categories=("Cs", "Cn")), max_size=40)


def synthetic_like(n_docs: int, seed: int) -> list[str]:
    """Documents from a few word-level sources (a stand-in for nanigpt.data.synthetic)."""
    rng = random.Random(seed)
    vocabularies = [
        ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it's", "slept", "."],
        ["0", "1", "42", "3.14", "+", "-", "=", "x", "y", "(", ")"],
        ["naïve", "café", "北京", "東京", "🎉", "e\u0301", "ß", "Ωμέγα", "\n"],
    ]
    docs = []
    for _ in range(n_docs):
        words = vocabularies[rng.randrange(3)]
        docs.append(" ".join(rng.choice(words) for _ in range(rng.randint(0, 60))))
    return docs


def test_pattern_is_shared():
    assert nanigpt_rs.GPT2_PATTERN == GPT2_PATTERN


def test_merge_tie_break_and_overlap():
    # "aaa" holds (a, a) twice (overlapping); "bc" and "cb" hold one pair each.
    merges = train_bpe(["aaa", "bc", "cb"], 261)
    a, b, c = ord("a"), ord("b"), ord("c")
    assert merges[0] == (a, a)  # count 2 beats (b, c) and (c, b) with 1 each
    # "aaa" -> [aa, a]; now (aa, a), (b, c), (c, b) tie at 1: smallest (left, right) first
    assert merges[1:] == [(b, c), (c, b), (256, a)]
    assert [tuple(m) for m in nanigpt_rs.train_bpe(["aaa", "bc", "cb"], 261)] == merges


@pytest.mark.parametrize("vocab_size", [257, 300, 600])
def test_rust_equals_python_on_synthetic_like_text(vocab_size):
    texts = synthetic_like(150, seed=vocab_size)
    merges = train_bpe(texts, vocab_size)
    assert [tuple(m) for m in nanigpt_rs.train_bpe(texts, vocab_size)] == merges
    assert [tuple(m) for m in nanigpt_rs.train_bpe(texts, vocab_size, num_threads=1)] == merges
    tok = Tokenizer(merges, vocab_size)
    rust = tok.rust()
    assert rust.encode_batch(texts, append_eot=True) == [tok.encode_document(t) for t in texts]
    for t in texts[:20]:
        assert tok.decode(tok.encode(t)) == t


@pytest.fixture(scope="module")
def unicode_tokenizer() -> Tokenizer:
    rng = random.Random(0)
    pool = "abc xyz 123 éß北京🎉\u0301\n\t'sll!?"
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 80))) for _ in range(100)]
    return Tokenizer(train_bpe(texts, 400), 400)


@settings(max_examples=150, deadline=None)
@given(st.lists(assigned_text, min_size=1, max_size=6))
def test_rust_equals_python_on_random_unicode(texts):
    assert "".join(c for t in texts for c in split_chunks(t)) == "".join(texts)
    merges = train_bpe(texts, 300)
    assert [tuple(m) for m in nanigpt_rs.train_bpe(texts, 300)] == merges
    tok = Tokenizer(merges, 300)
    assert tok.rust().encode_batch(texts) == [tok.encode(t) for t in texts]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_valid_string(unicode_tokenizer, text):
    tok = unicode_tokenizer
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.rust().encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(assigned_text)
def test_rust_ids_equal_python_ids(unicode_tokenizer, text):
    tok = unicode_tokenizer
    assert tok.rust().encode(text) == tok.encode(text)


@pytest.mark.parametrize(
    "text",
    ["", "🎉" * 50, "e\u0301\u0301\u0301", " " * 5000, "x" * 20000, "a\n" * 1000, f"a{EOT}b"],
)
def test_edge_cases(unicode_tokenizer, text):
    tok = unicode_tokenizer
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eot_id not in ids  # the special token text is ordinary text inside a document
    assert tok.rust().encode(text) == ids


def test_lone_surrogate_is_refused(unicode_tokenizer):
    with pytest.raises(ValueError, match="lone surrogate"):
        unicode_tokenizer.encode("ok \ud800 not ok")
    with pytest.raises(ValueError, match="lone surrogate"):
        train_bpe(["\udfff"], 300)


def test_save_load_round_trip(tmp_path, unicode_tokenizer):
    path = tmp_path / "tok" / "tokenizer.json"
    unicode_tokenizer.save(path)
    obj = json.loads(path.read_text())
    assert obj["special_tokens"] == {EOT: 399} and obj["vocab_size"] == 400
    loaded = Tokenizer.load(path)
    assert loaded.merges == unicode_tokenizer.merges and loaded.pattern == GPT2_PATTERN


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.pop("merges"), "missing key 'merges'"),
        (lambda o: o.update(version=9), "version 9"),
        (lambda o: o.update(vocab_size=10), "vocab_size"),
        (lambda o: o["merges"].append([5, 100000]), "merge"),
        (lambda o: o.update(pattern="(("), "does not compile"),
        (lambda o: o.update(special_tokens={EOT: 3}), "special_tokens"),
    ],
)
def test_bad_tokenizer_file(tmp_path, unicode_tokenizer, mutate, message):
    obj = unicode_tokenizer.to_dict()
    mutate(obj)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(TokenizerError, match=message) as e:
        Tokenizer.load(path)
    assert str(path) in str(e.value)


def test_not_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Tokenizer.load(path)


def test_bench_cli_smoke(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanigpt.bench.tokenizer import main as bench_main

    texts = synthetic_like(60, seed=3)
    pq.write_table(pa.table({"text": texts}), tmp_path / "t.parquet")
    out = tmp_path / "rust" / "tokenizer.parquet"
    argv = ["--input", f"syn={tmp_path / 't.parquet'}", "--vocab-size", "300", "--out", str(out),
            "--python-mb", "0.002", "--repeats", "1", "--seq-len", "8", "--batch-size", "2",
            "--loader-batches", "3"]  # fmt: skip
    assert bench_main(argv) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["ratios"]["syn"]["bytes_per_token_ours_over_hf"] > 0
