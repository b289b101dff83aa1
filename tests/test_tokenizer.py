"""Tokenizers: SentencePiece training from specs and corpora, the HF backend, save/load, errors."""

import json
from pathlib import Path

import pytest

from unimodal.tokenizer import (
    DEFAULT_SPECIALS,
    SPECIAL_ROLES,
    CorpusError,
    SpecError,
    Tokenizer,
    TokenizerError,
    TokenizerSpec,
    train_from_config,
    train_tokenizer,
)

CORPUS = [
    "a red circle at the top left",
    "a small blue square in the middle",
    "two green triangles at the bottom right",
    "the yellow circle moves to the left",
    "Héllo wörld, ünïcode café",
    "日本語のテキスト and 中文 mixed",
    "emoji 🙂 and arrows → ←",
    "Numbers 123 456, punctuation: (yes)!",
] * 10

# NFKC-stable, single-spaced, so nmt_nfkc normalisation leaves them unchanged; some characters are unseen.
ROUND_TRIP = [
    "a red circle at the top left",
    "A Big PURPLE hexagon",
    "Ünïcode → 日本語 🙂 ok",
    "Ελληνικά και русский текст",
    "qzx unseen words: zebra, quokka!",
    "<boi> and <null> are just text here",
    "tabs\tand\nnewlines",
]


def spec(**kw) -> TokenizerSpec:
    return TokenizerSpec(**{"name": "t", "algorithm": "unigram", "vocab_size": 400, **kw})


@pytest.fixture(scope="module")
def sp_tok() -> Tokenizer:
    return train_tokenizer(spec(), CORPUS)


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def build_hf_json(path: Path, specials: list[str]) -> Path:
    """A tiny byte-level BPE trained with the `tokenizers` library itself."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.save(str(path))
    return path


# ---------------------------------------------------------------- SentencePiece backend


def expected(text: str) -> str:
    return " ".join(text.split())  # nmt_nfkc maps tabs/newlines to spaces and collapses runs


@pytest.mark.parametrize("algorithm", ["unigram", "bpe", "char", "word"])
def test_round_trip(algorithm):
    tok = train_tokenizer(spec(algorithm=algorithm), CORPUS)
    for text in ROUND_TRIP:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == expected(text), (algorithm, text)


def test_identity_normalization_keeps_text_exactly():
    tok = train_tokenizer(spec(normalization="identity"), CORPUS)
    for text in ["Ｆｕｌｌ width", "ﬁ ligature", "café"]:
        assert tok.decode(tok.encode(text)) == text


def test_specials_distinct_present_and_looked_up(sp_tok):
    s = sp_tok.specials
    assert set(s) == set(SPECIAL_ROLES)
    assert len(set(s.values())) == len(SPECIAL_ROLES)
    for role, i in s.items():
        assert i == getattr(sp_tok, f"{role}_id")
        assert sp_tok.token_to_id(DEFAULT_SPECIALS[role]) == i
        assert sp_tok.id_to_token(i) == DEFAULT_SPECIALS[role]
        assert sp_tok._sp.piece_to_id(DEFAULT_SPECIALS[role]) == i  # the backend's own lookup


def test_encode_adds_no_specials_and_decode_drops_them(sp_tok):
    text = "a red circle <boi><eoi><null><pad><bos><eos>"
    ids = sp_tok.encode(text)
    assert not set(ids) & set(sp_tok.specials.values())
    plain = sp_tok.encode("a red circle")
    wrapped = [sp_tok.bos_id, *plain, sp_tok.boi_id, sp_tok.eoi_id, sp_tok.null_id, sp_tok.eos_id, sp_tok.pad_id]
    assert sp_tok.decode(wrapped) == "a red circle"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        sp_tok.decode([sp_tok.vocab_size])


def test_custom_special_strings():
    strings = {"pad": "[PAD]", "bos": "[BOS]", "eos": "[EOS]", "boi": "[IMG]", "eoi": "[/IMG]", "null": "[NULL]"}
    tok = train_tokenizer(spec(special_tokens=strings), CORPUS)
    for role, s in strings.items():
        assert tok.specials[role] == tok.token_to_id(s)
    assert tok.token_to_id("<boi>") is None


def test_save_load_identical(sp_tok, tmp_path):
    sp_tok.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "unimodal_tokenizer.json").read_text())
    assert meta["backend"] == "sentencepiece" and meta["special_ids"] == sp_tok.specials
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.specials == sp_tok.specials and loaded.vocab_size == sp_tok.vocab_size
    for text in ROUND_TRIP:
        assert loaded.encode(text) == sp_tok.encode(text)
    # bring-your-own path for the bare model file
    bare = Tokenizer.from_file(tmp_path / "tok" / "tokenizer.model")
    assert bare.encode(ROUND_TRIP[2]) == sp_tok.encode(ROUND_TRIP[2])


def test_load_rejects_mismatched_ids(sp_tok, tmp_path):
    d = sp_tok.save(tmp_path / "tok")
    meta = json.loads((d / "unimodal_tokenizer.json").read_text())
    meta["special_ids"]["pad"] = 99
    (d / "unimodal_tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerError, match="disagree"):
        Tokenizer.load(d)
    with pytest.raises(FileNotFoundError, match="unimodal_tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_missing_special_is_named(sp_tok, tmp_path):
    d = sp_tok.save(tmp_path / "tok")
    with pytest.raises(TokenizerError, match=r"'<image>' \(role 'boi'\)"):
        Tokenizer.from_file(d / "tokenizer.model", specials={"boi": "<image>"})


def test_determinism(tmp_path):
    a = train_tokenizer(spec(), CORPUS)
    b = train_tokenizer(spec(), list(CORPUS))
    assert a._proto == b._proto
    assert [a.encode(t) for t in ROUND_TRIP] == [b.encode(t) for t in ROUND_TRIP]


def test_lowercase(tmp_path):
    tok = train_tokenizer(spec(lowercase=True), CORPUS)
    assert tok.encode("A RED Circle") == tok.encode("a red circle")
    loaded = Tokenizer.load(tok.save(tmp_path / "tok"))
    assert loaded.lowercase and loaded.encode("A RED Circle") == tok.encode("a red circle")


def test_vocab_too_small_names_key():
    with pytest.raises(SpecError, match="vocab_size"):
        train_tokenizer(spec(vocab_size=100), CORPUS)


# ---------------------------------------------------------------- HF backend


def test_hf_backend(tmp_path):
    path = build_hf_json(tmp_path / "tokenizer.json", list(DEFAULT_SPECIALS.values()))
    tok = Tokenizer.from_file(path)
    assert tok.backend == "hf"
    from tokenizers import Tokenizer as HF

    raw = HF.from_file(str(path))
    for role, i in tok.specials.items():
        assert raw.token_to_id(DEFAULT_SPECIALS[role]) == i
    assert len(set(tok.specials.values())) == len(SPECIAL_ROLES)
    for text in ROUND_TRIP:  # byte-level BPE: exact round trip, no normalisation
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("x <boi> y")
    assert tok.boi_id not in ids
    assert tok.decode([tok.bos_id, *tok.encode("a red circle"), tok.eos_id]) == "a red circle"
    loaded = Tokenizer.load(tok.save(tmp_path / "saved"))
    assert loaded.backend == "hf" and loaded.specials == tok.specials
    assert [loaded.encode(t) for t in ROUND_TRIP] == [tok.encode(t) for t in ROUND_TRIP]


def test_hf_add_special_tokens(tmp_path):
    path = build_hf_json(tmp_path / "tokenizer.json", ["[PAD]", "<s>", "</s>"])
    with pytest.raises(TokenizerError, match="'<boi>'.*add_special_tokens=True"):
        Tokenizer.from_file(path, specials={"pad": "[PAD]", "bos": "<s>", "eos": "</s>"})
    base = Tokenizer.from_file(path, specials={"pad": "[PAD]", "bos": "<s>", "eos": "</s>"}, add_special_tokens=True)
    from tokenizers import Tokenizer as HF

    n = HF.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    assert base.vocab_size == n + 3  # boi, eoi, null appended
    assert base.pad_id == 0 and {base.boi_id, base.eoi_id, base.null_id} == {n, n + 1, n + 2}
    assert base.decode([base.boi_id, *base.encode("hi there"), base.eoi_id]) == "hi there"
    loaded = Tokenizer.load(base.save(tmp_path / "saved"))
    assert loaded.specials == base.specials and loaded.encode("hi there") == base.encode("hi there")
    with pytest.raises(TokenizerError, match="only supported for tokenizer.json"):
        Tokenizer.from_file(train_tokenizer(spec(), CORPUS).save(tmp_path / "sp") / "tokenizer.model",
                            specials={"boi": "<image>"}, add_special_tokens=True)  # fmt: skip


# ---------------------------------------------------------------- corpora and configs


def test_train_from_text_file_config(tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n\n", encoding="utf-8")
    cfg = write_yaml(
        tmp_path / "tok.yaml",
        {
            "name": "mine",
            "algorithm": "bpe",
            "vocab_size": 400,
            "special_tokens": {"null": "<nothing>"},
            "corpus": {"kind": "text_file", "path": "corpus.txt"},
            "output": "out/mine",
        },
    )
    tok = train_from_config(cfg)
    loaded = Tokenizer.load(tmp_path / "out" / "mine")  # relative to the spec's folder
    assert loaded.specials == tok.specials and loaded.token_to_id("<nothing>") == tok.null_id
    assert loaded.decode(loaded.encode("a red circle")) == "a red circle"
    assert train_tokenizer(spec(), CORPUS)._proto != tok._proto


def test_train_from_datasets_jsonl(tmp_path):
    rows = [{"caption": t, "texts": [t, None, "interleaved " + t], "n": i} for i, t in enumerate(CORPUS)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    corpus = {"kind": "datasets", "data_files": "data.jsonl", "format": "jsonl", "column": "caption"}
    base = {"name": "ds", "algorithm": "unigram", "vocab_size": 400, "corpus": corpus}
    tok = train_from_config(write_yaml(tmp_path / "a.yaml", base))
    assert tok._proto == train_tokenizer(spec(), CORPUS)._proto  # same text -> same model
    assert (tmp_path / "ds" / "tokenizer.model").is_file()  # default output: <spec folder>/<name>
    lists = {**base, "corpus": {**corpus, "column": "texts"}, "output": "lists"}
    assert train_from_config(write_yaml(tmp_path / "b.yaml", lists)).decode([]) == ""
    missing = {**base, "corpus": {**corpus, "column": "text"}}
    with pytest.raises(CorpusError, match=r"no column 'text' \(columns: caption, texts, n\)"):
        train_from_config(write_yaml(tmp_path / "c.yaml", missing))
    wrong = {**base, "corpus": {**corpus, "column": "n"}}
    with pytest.raises(CorpusError, match="row 0, column 'n': expected text, got int"):
        train_from_config(write_yaml(tmp_path / "d.yaml", wrong))


def test_missing_files(tmp_path):
    cfg = {"name": "x", "algorithm": "unigram", "vocab_size": 400}
    text = {**cfg, "corpus": {"kind": "text_file", "path": "nope.txt"}}
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_from_config(write_yaml(tmp_path / "a.yaml", text))
    ds = {**cfg, "corpus": {"kind": "datasets", "data_files": ["gone-*.jsonl"], "format": "jsonl"}}
    with pytest.raises(FileNotFoundError, match="gone-"):
        train_from_config(write_yaml(tmp_path / "b.yaml", ds))
    with pytest.raises(FileNotFoundError, match="absent.yaml"):
        train_from_config(tmp_path / "absent.yaml")


def test_invalid_utf8_names_file_and_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"first line ok\nsecond \xff\xfe line\n")
    cfg = {"name": "x", "algorithm": "unigram", "vocab_size": 400, "corpus": {"kind": "text_file", "path": "bad.txt"}}
    with pytest.raises(CorpusError, match=r"bad\.txt: not valid UTF-8 at byte offset 21 \(line 2\)"):
        train_from_config(write_yaml(tmp_path / "a.yaml", cfg))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_bytes(b'{"text": "ok"}\n{"text": "\xc3("}\n')
    cfg["corpus"] = {"kind": "datasets", "data_files": "bad.jsonl", "format": "jsonl"}
    with pytest.raises(CorpusError, match=r"bad\.jsonl: not valid UTF-8 at byte offset 25 \(line 2\)"):
        train_from_config(write_yaml(tmp_path / "b.yaml", cfg))


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("\n   \n\t\n", encoding="utf-8")
    cfg = {"name": "x", "algorithm": "unigram", "vocab_size": 400, "corpus": {"kind": "text_file", "path": "empty.txt"}}
    with pytest.raises(CorpusError, match="empty corpus.*empty.txt"):
        train_from_config(write_yaml(tmp_path / "a.yaml", cfg))
    with pytest.raises(CorpusError, match="empty corpus"):
        train_tokenizer(spec(), [])
    with pytest.raises(CorpusError, match="corpus item 2 is int"):
        train_tokenizer(spec(), ["a red circle", "more", 3])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"vocab": 5}, r"unknown key 'vocab'"),
        ({"vocab_size": "big"}, r"key 'vocab_size' must be int, got str"),
        ({"vocab_size": True}, r"key 'vocab_size' must be int, got bool"),
        ({"lowercase": "yes"}, r"key 'lowercase' must be bool"),
        ({"algorithm": "wordpiece"}, r"key 'algorithm' must be one of"),
        ({"normalization": "nfd"}, r"key 'normalization' must be one of"),
        ({"special_tokens": {"sep": "<sep>"}}, r"unknown key 'special_tokens.sep'"),
        ({"special_tokens": {"pad": 0}}, r"key 'special_tokens.pad' must be str"),
        ({"special_tokens": {"boi": "<eoi>"}}, r"key 'special_tokens' has repeated strings"),
        ({"corpus": {"kind": "text_file", "path": "a.txt", "column": "x"}}, r"unknown key 'corpus.column'"),
        ({"corpus": {"kind": "datasets", "data_files": "a.jsonl"}}, r"missing required key 'corpus.format'"),
        ({"corpus": {"kind": "datasets", "data_files": "a", "format": "xml"}}, r"key 'corpus.format' must be one"),
        ({"corpus": {"kind": "builtin", "name": "shapes", "n": "many"}}, r"key 'corpus.n' must be int"),
        ({"corpus": {"kind": "web"}}, r"key 'corpus.kind' must be one of"),
    ],
)
def test_spec_validation_names_file_and_key(tmp_path, data, match):
    path = write_yaml(tmp_path / "bad_spec.yaml", {"name": "x", "algorithm": "unigram", "vocab_size": 400, **data})
    with pytest.raises(SpecError, match=match) as e:
        TokenizerSpec.from_yaml(path)
    assert "bad_spec.yaml" in str(e.value)


def test_spec_missing_required_key(tmp_path):
    path = write_yaml(tmp_path / "s.yaml", {"name": "x", "algorithm": "unigram"})
    with pytest.raises(SpecError, match=r"s\.yaml: missing required key 'vocab_size'"):
        TokenizerSpec.from_yaml(path)


def test_bare_null_key_is_the_null_role(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nalgorithm: bpe\nvocab_size: 400\nspecial_tokens:\n  null: <none>\n", encoding="utf-8")
    assert TokenizerSpec.from_yaml(path).special_tokens["null"] == "<none>"


def test_shipped_specs_parse():
    folder = Path(__file__).resolve().parents[1] / "tokenizers_cfg"
    for name in ("shapes", "digits"):
        s = TokenizerSpec.from_yaml(folder / f"{name}.yaml")
        assert s.corpus is not None and s.corpus.kind == "builtin" and s.corpus.name == name
        assert s.output == folder / name
        assert s.special_tokens == DEFAULT_SPECIALS
    assert TokenizerSpec.from_yaml(folder / "shapes.yaml").corpus.task == "scenes"
