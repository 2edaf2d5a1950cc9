"""lengthwise inside the Hugging Face Trainer: the Trainer trains on exactly the batches of
lengthwise's loader (also after a resume), its loss is lengthwise's mean token loss, and
GeneralizationCallback decides (alerts, early stop, best checkpoint) what its rules replayed on
its own log decide."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the HF Trainer integration needs transformers")
pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate")

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    TrainerCallback,
    TrainingArguments,
)

from lengthwise.batch import Batch  # noqa: E402
from lengthwise.config import BatchingConfig, Config  # noqa: E402
from lengthwise.data.loader import BatchLoader  # noqa: E402
from lengthwise.data.store import TokenStore  # noqa: E402
from lengthwise.data.strategies import build_strategy  # noqa: E402
from lengthwise.errors import UserError  # noqa: E402
from lengthwise.integrations.transformers import (  # noqa: E402
    GeneralizationCallback,
    LengthwiseTrainer,
    lengthwise_dataset,
    register_attention,
    to_hf_batch,
)
from lengthwise.model.attention import AttnMask  # noqa: E402
from lengthwise.train.monitor import EarlyStopping, OODMonitor  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

DD = {  # Dataset Decomposition with Grow-P2: T changes from step to step
    "strategy": "decomposition",
    "tokens_per_step": 512,
    "max_len": 64,
    "min_bucket": 8,
    "curriculum": {"name": "grow_p2", "cycles": 2},
}
PACKED = {"strategy": "best_fit", "tokens_per_step": 512, "max_len": 64}  # doc_ids in rows


def store_of(data: dict) -> TokenStore:
    return TokenStore(Path(data["out_dir"]) / "train")


def reference_batches(data: dict, batching: dict, n: int) -> list[Batch]:
    """The first n batches of lengthwise's own loader, built as the lengthwise trainer does."""
    store = store_of(data)
    strategy = build_strategy(
        BatchingConfig.model_validate(batching),
        store.tokens,
        store.offsets,
        store.meta["tokenizer"]["pad_id"],
        prompt_lens=store.prompt_lens,
        positions=store.positions,
    )
    loader = BatchLoader(strategy)
    return [next(loader) for _ in range(n)]


def tiny_llama(data: dict, impl: str = "lengthwise", seed: int = 0):
    register_attention()
    config = LlamaConfig(
        vocab_size=store_of(data).meta["tokenizer"]["vocab_size"],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention: the repeat path of the attention
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=impl)


def hf_args(out: Path, max_steps: int, **kw) -> TrainingArguments:
    base = dict(
        output_dir=str(out),
        max_steps=max_steps,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_pin_memory=False,
    )
    return TrainingArguments(**(base | kw))


def eval_config(data: dict, **monitor) -> Config:
    return Config.model_validate(
        {
            "data": data,
            "batching": DD,
            "eval": {
                "sets": [
                    {"name": "val", "split": "val", "tag": "id", "tokens": 256},
                    {"name": "ood", "split": "ood", "tag": "ood", "tokens": 256},
                ]
            },
            "monitor": monitor,
        }
    )


class Recording(LengthwiseTrainer):
    """Keeps every input dict the Trainer's loop hands to compute_loss, with its item count."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[dict, int]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append(({k: v.clone() for k, v in inputs.items()}, int(num_items_in_batch)))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class Weights(TrainerCallback):
    """The model's weights after every optimizer step."""

    def __init__(self):
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.at[state.global_step] = {k: v.clone() for k, v in model.state_dict().items()}


def assert_is(inputs: dict, batch: Batch) -> None:
    """The Trainer's input dict is the lengthwise Batch, key by key."""
    assert torch.equal(inputs["input_ids"], batch.input_ids)
    assert torch.equal(inputs["shift_labels"], batch.targets)
    assert torch.equal(inputs["labels"][:, 1:], batch.targets[:, :-1])
    assert (inputs["labels"][:, 0] == -100).all()
    assert torch.equal(inputs["position_ids"], batch.position_ids)
    assert "attention_mask" not in inputs
    if batch.doc_ids is None:
        assert "doc_ids" not in inputs
    else:
        assert torch.equal(inputs["doc_ids"], batch.doc_ids)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------ the batch dict


def test_batch_dict_by_attention_implementation():
    """labels, shift_labels and the document layout of one packed row, per implementation."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 1]])
    targets = torch.tensor([[6, 7, -100, 9, -100, -100]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    doc = torch.tensor([[0, 0, 0, 1, 1, -1]])
    batch = Batch(ids, targets, pos, doc, n_target_tokens=3)
    out = to_hf_batch(batch, "lengthwise")
    assert out["labels"].tolist() == [[-100, 6, 7, -100, 9, -100]]
    assert out["shift_labels"] is targets and out["doc_ids"] is doc
    assert "attention_mask" not in out
    mask = to_hf_batch(batch, "sdpa")["attention_mask"]
    assert mask.shape == (1, 1, 6, 6) and mask.dtype == torch.bool
    assert torch.equal(mask, AttnMask(doc).dense(6, torch.device("cpu")))
    assert mask[0, 0, 4, 3] and not mask[0, 0, 3, 2] and not mask[0, 0, 5, 4] and mask[0, 0, 5, 5]
    eager = to_hf_batch(batch, "eager")["attention_mask"]
    assert eager.dtype == torch.float32 and eager[0, 0, 4, 3] == 0
    assert eager[0, 0, 3, 2] == torch.finfo(torch.float32).min
    flash = to_hf_batch(batch, "flash_attention_2")  # varlen over the segments 3, 2, 1
    assert "attention_mask" not in flash and "doc_ids" not in flash
    assert flash["cu_seq_lens_q"].tolist() == [0, 3, 5, 6] and flash["max_length_q"] == 3
    one_doc = Batch(ids, targets, pos, None, n_target_tokens=3)  # decomposition
    keys = {"input_ids", "labels", "shift_labels", "position_ids"}
    assert set(to_hf_batch(one_doc, "lengthwise")) == keys  # no mask at all
    for impl in ("sdpa", "eager"):  # all ones: causality never read off position ids
        out = to_hf_batch(one_doc, impl)
        assert set(out) == keys | {"attention_mask"} and out["attention_mask"].tolist() == [[1] * 6]
    with pytest.raises(UserError, match="'paged_attention'"):
        to_hf_batch(batch, "paged_attention")


@pytest.mark.parametrize("impl", ["lengthwise", "sdpa", "eager"])
@pytest.mark.parametrize("batching", [PACKED, DD], ids=["best_fit", "decomposition"])
def test_hf_loss_is_the_lengthwise_mean_token_loss(hf_data, impl, batching):
    """The model's loss on the batch dict equals the mean token loss over the lengthwise
    targets, computed independently: every document alone (its own forward, positions from
    0), so a document that saw its neighbour would show."""
    batch = reference_batches(hf_data, batching, 3)[2]
    model = tiny_llama(hf_data, impl)
    n = batch.n_target_tokens
    inputs = to_hf_batch(batch, impl)
    with torch.no_grad():
        loss = model(**inputs, num_items_in_batch=torch.tensor(n)).loss
        total = torch.zeros((), dtype=torch.float64)
        rows, T = batch.input_ids.shape
        segments = [(b, 0, T) for b in range(rows)]  # one document per row
        if batch.doc_ids is not None:
            segments = AttnMask(batch.doc_ids).segments()
        for b, s, e in segments:
            logits = model(input_ids=batch.input_ids[b : b + 1, s:e]).logits[0]
            total += torch.nn.functional.cross_entropy(
                logits.float(), batch.targets[b, s:e], ignore_index=-100, reduction="sum"
            ).double()
    assert batch.doc_ids is None or len(segments) > rows  # rows really packed
    assert abs(loss.item() - total.item() / n) < 1e-6


# ---------------------------------------------------------------------- the Trainer's batches


@pytest.fixture(scope="module")
def dd_run(hf_data, tmp_path_factory):
    """20 Trainer steps of Dataset Decomposition + Grow-P2, checkpoint at step 10, evals every 5
    steps: the recorded inputs, the callback, the run folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("dd_run")
    cb = GeneralizationCallback(eval_config(hf_data), every_steps=5)
    trainer = Recording(
        model=tiny_llama(hf_data),
        args=hf_args(out, 20, save_strategy="steps", save_steps=10),
        train_dataset=lengthwise_dataset(store_of(hf_data), DD),
        callbacks=[cb],
    )
    trainer.train()
    torch.set_num_threads(threads)
    return trainer, cb, out


def test_trainer_trains_on_lengthwise_batches(dd_run, hf_data):
    trainer, _, _ = dd_run
    expected = reference_batches(hf_data, DD, 20)
    assert len(trainer.seen) == 20
    for (inputs, n_items), batch in zip(trainer.seen, expected, strict=True):
        assert_is(inputs, batch)
        assert n_items == batch.n_target_tokens  # the Trainer normalizes by lengthwise's count
    lengths = [b.input_ids.shape[1] for b in expected]
    assert len(set(lengths)) >= 3  # the curriculum really changes T between steps
    assert {b.input_ids.numel() for b in expected} == {512}  # constant tokens per step


def test_packed_rows_reach_the_trainer_with_doc_ids(hf_data, tmp_path):
    trainer = Recording(
        model=tiny_llama(hf_data),
        args=hf_args(tmp_path, 6),
        train_dataset=lengthwise_dataset(store_of(hf_data), PACKED),
    )
    trainer.train()
    for (inputs, n_items), batch in zip(
        trainer.seen, reference_batches(hf_data, PACKED, 6), strict=True
    ):
        assert batch.doc_ids is not None
        assert_is(inputs, batch)
        assert n_items == batch.n_target_tokens


def test_resume_continues_the_same_batches_and_decisions(dd_run, hf_data, tmp_path):
    """Steps 11-20 of a run resumed from step 10 (a model of another seed, overwritten by the
    checkpoint) see the same batches as the uninterrupted run, end with the same weights, and
    the callback's evals after the resume log the same metrics."""
    a, cb_a, out = dd_run
    shutil.copytree(out / "checkpoint-10", tmp_path / "checkpoint-10")
    cb = GeneralizationCallback(eval_config(hf_data), every_steps=5)
    b = Recording(
        model=tiny_llama(hf_data, seed=1),
        args=hf_args(tmp_path, 20, save_strategy="steps", save_steps=10),
        train_dataset=lengthwise_dataset(store_of(hf_data), DD),
        callbacks=[cb],
    )
    b.train(resume_from_checkpoint=str(tmp_path / "checkpoint-10"))
    assert len(b.seen) == 10
    for (x, n), (y, m) in zip(b.seen, a.seen[10:], strict=True):
        assert x.keys() == y.keys() and n == m
        for k in x:
            assert torch.equal(x[k], y[k]), k
    assert_same_weights(a.model.state_dict(), b.model.state_dict())

    def evals(trainer, after):
        return [r for r in trainer.state.log_history if "eval_ood/loss" in r and r["step"] > after]

    assert [r["step"] for r in evals(b, 10)] == [15, 20]
    assert evals(b, 10) == evals(a, 10)
    assert cb.counters.tokens == cb_a.counters.tokens == 20 * 512


def test_gradient_accumulation_splits_each_step(hf_data, tmp_path):
    """gradient_accumulation_steps=2: one optimizer step is still one lengthwise step, in two
    micro-batches of its rows, the loss normalized by the whole step's targets."""
    trainer = Recording(
        model=tiny_llama(hf_data),
        args=hf_args(tmp_path, 4, gradient_accumulation_steps=2),
        train_dataset=lengthwise_dataset(store_of(hf_data), DD),
    )
    trainer.train()
    assert trainer.state.global_step == 4 and len(trainer.seen) == 8
    for i, batch in enumerate(reference_batches(hf_data, DD, 4)):
        (x, n), (y, m) = trainer.seen[2 * i : 2 * i + 2]
        joined = {k: torch.cat([x[k], y[k]]) for k in x}
        assert_is(joined, batch)
        assert n == m == batch.n_target_tokens


def test_refuses_what_would_change_the_batches(hf_data, tmp_path):
    store = store_of(hf_data)
    other = LengthwiseTrainer(
        model=tiny_llama(hf_data, "lengthwise"),
        args=hf_args(tmp_path, 2),
        train_dataset=lengthwise_dataset(store, PACKED, attn_implementation="sdpa"),
    )
    with pytest.raises(UserError, match="'sdpa', the model runs 'lengthwise'"):
        other.train()
    with pytest.raises(UserError, match="restore_callback_states_from_checkpoint"):
        LengthwiseTrainer(
            model=tiny_llama(hf_data),
            args=hf_args(tmp_path, 2, restore_callback_states_from_checkpoint=True),
            train_dataset=lengthwise_dataset(store, DD),
            callbacks=[GeneralizationCallback(eval_config(hf_data), every_steps=1)],
        )
    unattached = LengthwiseTrainer(
        model=tiny_llama(hf_data),
        args=hf_args(tmp_path, 2),
        train_dataset=lengthwise_dataset(store, DD),
    )
    unattached.add_callback(GeneralizationCallback(eval_config(hf_data), every_steps=1))
    with pytest.raises(UserError, match="pass the Trainer to log through"):
        unattached.train()


# ------------------------------------------------------------------------------ the callback


@pytest.mark.parametrize("unit", ["slots", "targets"])
def test_callback_evaluates_every_tokens_of_the_budget_unit(hf_data, tmp_path, unit):
    """eval.every_tokens counts what the lengthwise trainer counts: input slots (512 a step)
    or real targets (summed from the steps' batches), and always evaluates at the last step."""
    every = 1024 if unit == "slots" else 900
    cfg = eval_config(hf_data).model_dump(mode="json")
    cfg["eval"]["every_tokens"], cfg["train"] = every, {"budget_unit": unit}
    trainer = LengthwiseTrainer(
        model=tiny_llama(hf_data),
        args=hf_args(tmp_path, 7),
        train_dataset=lengthwise_dataset(store_of(hf_data), DD),
        callbacks=[GeneralizationCallback(Config.model_validate(cfg))],
    )
    trainer.train()
    expected, mark, spent = [], every, 0
    for step, batch in enumerate(reference_batches(hf_data, DD, 7), start=1):
        spent += batch.input_ids.numel() if unit == "slots" else batch.n_target_tokens
        if spent >= mark or step == 7:
            expected.append(step)
            mark = spent + every
    evals = [r for r in trainer.state.log_history if "eval_ood/loss" in r]
    assert [r["step"] for r in evals] == expected and len(expected) >= 3
    assert [r["eval_tokens_seen"] for r in evals] == [512 * s for s in expected]


def replay(log_history: list[dict], alert_drop: float, patience: int):
    """lengthwise's rules run again on the metrics the callback logged: (alerts, stop step,
    best step)."""
    monitor = OODMonitor(["ood/loss"], alert_drop=alert_drop)
    stopper = EarlyStopping("ood_mean/loss", patience=patience)
    alerts = []
    for r in log_history:
        if "eval_ood/loss" not in r:
            continue
        metrics = {
            k[5:]: v for k, v in r.items() if k.startswith("eval_") and k != "eval_tokens_seen"
        }
        fired = monitor.update(metrics, r["step"], r["eval_tokens_seen"])
        alerts += [(a.metric, a.step) for a in fired]
        if stopper.update(metrics["ood_mean/loss"], r["step"], alert=bool(fired)).stop:
            return alerts, r["step"], stopper.best_step
    return alerts, None, stopper.best_step


def test_callback_stops_where_the_rule_replayed_on_its_log_says(hf_data, tmp_path):
    """Real evals on the Trainer's live model: the OOD (upper-case) loss rises as the model
    fits the lower-case domain. The run stops at the step that EarlyStopping, replayed on the
    logged metrics, names; the alerts in log_history are the ones OODMonitor replays; and the
    weights at the end are those of the best step (restored from its checkpoint)."""
    patience, drop = 3, 0.01
    cfg = eval_config(
        hf_data,
        alert_drop=drop,
        early_stopping={"enabled": True, "patience": patience},
        restore_best=True,
    )
    cb = GeneralizationCallback(cfg, every_steps=2)
    weights = Weights()
    trainer = LengthwiseTrainer(
        model=tiny_llama(hf_data),
        args=hf_args(tmp_path, 60),
        train_dataset=lengthwise_dataset(store_of(hf_data), DD),
        callbacks=[cb, weights],
    )
    trainer.train()
    history = trainer.state.log_history
    alerts, stop, best = replay(history, drop, patience)
    assert stop is not None and stop < 60  # it did stop early
    assert trainer.state.global_step == stop
    assert cb.stop_reason and {"early_stop": cb.stop_reason, "step": stop} in history
    logged = [
        (k.removeprefix("eval_alert/"), r["step"])
        for r in history
        for k in r
        if k.startswith("eval_alert/")
    ]
    assert alerts and logged == alerts == [(a["metric"], a["step"]) for a in cb.alerts]
    assert cb.restored_step == best < stop
    assert trainer.state.best_model_checkpoint == str(tmp_path / f"checkpoint-{best}")
    # every logged value is a scalar (report_to loggers take no dicts): the eval's standard
    # errors arrive as eval_se/<metric>
    evals = [r for r in history if "eval_ood/loss" in r]
    assert all(isinstance(v, int | float) for r in evals for v in r.values())
    assert all(r["eval_se/ood/loss"] > 0 for r in evals)
    assert_same_weights(trainer.model.state_dict(), weights.at[best])


# ------------------------------------------------------------------------------ two ranks


@pytest.mark.slow
def test_two_ranks_train_as_one_process(hf_data, tmp_path):
    """torchrun, 2 gloo processes on CPU (~20 s) against one process: each rank trains on its
    half of every step's rows (together exactly the one-process batch), the loss is normalized
    by the global target count, so the weights after 6 steps are the one-process weights (up
    to the order of the float sums), and the evals agree."""
    from hf_ddp_worker import run  # tests/integrations/hf_ddp_worker.py

    worker = Path(__file__).parent / "hf_ddp_worker.py"
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(worker)]
    done = subprocess.run(
        [*cmd, json.dumps(hf_data), str(tmp_path / "two")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = torch.load(run(hf_data, tmp_path / "one"))
    r0, r1 = (torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1))
    assert len(one["seen"]) == len(r0["seen"]) == len(r1["seen"]) == 6
    for (x, n), (a, m0), (b, m1) in zip(one["seen"], r0["seen"], r1["seen"], strict=True):
        assert torch.equal(torch.cat([a, b]), x) and len(a) == len(b) == len(x) // 2
        assert n == m0 == m1  # the global count on both ranks
    assert_same_weights(r0["weights"], r1["weights"])
    for k, w in one["weights"].items():
        assert torch.allclose(w, r0["weights"][k], atol=1e-5), k
    evals = [[r for r in d["log"] if "eval_ood/loss" in r] for d in (one, r0)]
    assert [r["step"] for r in evals[0]] == [r["step"] for r in evals[1]] == [3, 6]
    for a, b in zip(*evals, strict=True):
        assert a["eval_tokens_seen"] == b["eval_tokens_seen"]
        for key in ("eval_val/loss", "eval_ood/loss"):
            assert abs(a[key] - b[key]) < 1e-5
