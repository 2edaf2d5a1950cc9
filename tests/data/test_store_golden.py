"""The store writer's output, byte for byte: text, task and coupled task stores, with and without
BOS, over several shards, compared with digests pinned from the writer before its refactor (main
at 75c3811), plus the first documents as hand-checkable arrays. A character tokenizer keeps the
ids independent of BPE training."""

import hashlib
import json

import pytest

from lengthwise.config import DataConfig
from lengthwise.data.store import TokenStore, prepare
from lengthwise.data.tokenizer import load_tokenizer

DOCS = {
    "a.txt": "Memory barriers order loads and stores.\n",
    "sub/b.txt": "The scheduler picks the next task.\n" * 3,
    "sub/c.txt": "",  # empty: skipped
    "d.txt": "x",
    "e.txt": "caf\u00e9 \u00fcber\tdone",  # outside the alphabet: <|unk|>
}
TASK = {"kind": "task", "task": "addition", "lengths": [1, 3], "n": 7}

# sha256 of each file; "meta": of meta.json without the fields that depend on the machine, the
# clock or the library version (seconds, source path and fingerprint, tokenizer hash).
GOLDEN = {
    "plain/text": {
        "doc_offsets.npy": "e860b0e9577218185791ab17187e4d9ba10253b57797d073cb997181a6aebe26",
        "tokens.bin": "d2420e917799634855c89f461729a0f02f4016ab7a25f4d7b4b4fa8f6b68781b",
        "meta": "919e1e149c9c5bf657d2cf1daabdf2d8c5940bec442e04b372d06b52a0997992",
    },
    "plain/task": {
        "doc_offsets.npy": "3b8c36ee28c58c03f52779dc01887a40ff4872fc1a61a3d88d9b4f4dc12179f9",
        "prompt_lens.npy": "0d0e1ffac87030de8c17ecafd497469434ab964fd12bd932853531a61fa25f93",
        "tokens.bin": "c4abe23f1c5b10709b06a437478140bff0419f31ee701e7873458cc138d892a8",
        "meta": "8e8b2b6b820a50fc606f2dde873bed1959c4fcefdbef69f63b1111726e187cb2",
    },
    "bos/text": {
        "doc_offsets.npy": "f1442651523b315d69c637fdb2bf363008e4188891213a963c9f9c3e54752a21",
        "tokens.bin": "1a1129fe381cfcf1d272e7b613526b6601aff65a903f0460f7795349902ec0cb",
        "meta": "5dc39c70916828cc376acb33d517fea0bfb65d20489db0f84a7bdce66c72fa7c",
    },
    "bos/coupled": {
        "doc_offsets.npy": "dcee7b01e1f657b7949e80e506ef6354600616084ca683df4bdeb5ae1ce64438",
        "positions.bin": "fd463ad17263b6690c31568cb8774e80b478b2ff991444c2a63f78c2ea5df234",
        "prompt_lens.npy": "cf51bd7abb86f0d50416f7fb74344b7b5a7facfd623dc8780172db1bde3a9e14",
        "tokens.bin": "09897a5fb32994652d078ab56a466e862519431ad614eaf699e24ac1cac2db4e",
        "meta": "2844f607839638fa3d1728378ef52674936050609fa427fdd46104357e4d58b0",
    },
    "bos/reversed": {  # the coupled format's tokens without its positions
        "doc_offsets.npy": "dcee7b01e1f657b7949e80e506ef6354600616084ca683df4bdeb5ae1ce64438",
        "prompt_lens.npy": "cf51bd7abb86f0d50416f7fb74344b7b5a7facfd623dc8780172db1bde3a9e14",
        "tokens.bin": "09897a5fb32994652d078ab56a466e862519431ad614eaf699e24ac1cac2db4e",
        "meta": "614267f2f95531aab78e8475ca80d2903c2071e192e7c4ae75c1e26938005f6e",
    },
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    corpus = root / "corpus"
    for name, text in DOCS.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text)
    text = {"kind": "text_dir", "path": str(corpus)}
    configs = {  # shards of 2 and 3 documents: the writer's shard boundaries are exercised
        "plain": {
            "tokenizer": {"kind": "char"},
            "encode_batch_docs": 2,
            "splits": {"text": text, "task": TASK},
        },
        "bos": {
            "tokenizer": {"kind": "char", "bos": True},
            "encode_batch_docs": 3,
            "splits": {
                "text": text,
                "coupled": {**TASK, "format": "coupled"},
                "reversed": {**TASK, "format": "reversed"},
            },
        },
    }
    for name, spec in configs.items():
        prepare(DataConfig.model_validate({"out_dir": str(root / name), **spec}), progress=False)
    return root


def _digests(store):
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.iterdir())
        if p.name != "meta.json"
    }
    meta = json.loads((store / "meta.json").read_text())
    meta.pop("seconds")
    meta["source"].pop("fingerprint")
    meta["source"].pop("path", None)
    meta["tokenizer"].pop("sha256")
    files["meta"] = hashlib.sha256(json.dumps(meta).encode()).hexdigest()  # key order included
    return files


@pytest.mark.parametrize("store", sorted(GOLDEN))
def test_store_bytes_are_unchanged(root, store):
    assert _digests(root / store) == GOLDEN[store]
    TokenStore(root / store).verify()


def test_first_documents_by_hand(root):
    tok = load_tokenizer(root / "plain" / "tokenizer.json")
    eos, bos = tok.eos_id, tok.bos_id
    task = TokenStore(root / "plain" / "task")
    assert task.offsets.tolist() == [0, 7, 17, 24, 33, 39, 51, 57]
    assert task.prompt_lens.tolist() == [4, 6, 4, 6, 4, 8, 4]  # "8+5=" is 4 characters
    assert task.doc(0).tolist() == tok.encode("8+5=13") + [eos]
    coupled = TokenStore(root / "bos" / "coupled")
    assert coupled.prompt_lens.tolist() == [5, 7, 5, 7, 5, 9, 5]  # BOS counts as prompt
    assert coupled.doc(0).tolist() == [bos, *tok.encode("8+5=31"), eos]
    assert coupled.positions[:8].tolist() == [0, 1, 0, 1, 0, 1, 2, 0]  # BOS gets 0
    text = TokenStore(root / "bos" / "text")
    assert text.offsets.tolist()[:2] == [0, 1 + len(DOCS["a.txt"]) + 1]
    assert text.doc(0).tolist() == [bos, *tok.encode(DOCS["a.txt"]), eos]
    assert text.prompt_lens is None  # a text store has no prompts, BOS or not
