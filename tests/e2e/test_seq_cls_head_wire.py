"""A seq-cls head is federated state (issue 14): a pretrained encoder without a head, over real mTLS + SecAgg.

The base is a tiny BERT saved *without* a classifier (as all-MiniLM-L6-v2 ships), so every process that
loads it for sequence classification gets a new head. The federation trains that head densely
(``modules_to_save``) through the secure sum; at the end every site and the consumer hold the bit-identical
head, and the consumer's stock-PEFT model gives the same logits as a site's model started from the global.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

from fedquilt.agent.pull import pull
from fedquilt.agent.saved_training import saved_parameters
from fedquilt.agent.transport import channel
from fedquilt.cli.federation_files import write_federation
from fedquilt.cli.workspace import Workspace
from fedquilt.coordinator import server
from fedquilt.coordinator.config import load_config
from fedquilt.strategies.base import RoundContext
from fedquilt.strategies.registry import federated_rule

from conftest import Federation

pytestmark = pytest.mark.slow


def tiny_bert_workspace(root: Path, ws: Workspace) -> Workspace:
    """``ws``'s sites and tokenizer with a tiny BertModel (no head) as the base."""
    model_dir = root / "bert"
    config = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=0,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(model_dir))  # no classifier in the folder
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (ws.model_dir / name).exists():
            shutil.copy(ws.model_dir / name, model_dir / name)
    return Workspace(root=root, model_dir=model_dir, task="seq-cls", num_labels=3, sites=ws.sites)


@pytest.mark.timeout(400)
def test_sites_and_consumer_end_with_the_same_head_and_logits(tmp_path: Path, workspace_factory) -> None:
    ws = tiny_bert_workspace(tmp_path / "ws", workspace_factory(2, "seq-cls"))
    files = write_federation(tmp_path / "fed", ws, rule="fedit", rounds=2, secagg=True,
                             train={"local_steps": 6, "batch_size": 8, "lr": 5e-3},
                             target_modules=["query", "value"], modules_to_save=["classifier"])
    running = server.start(load_config(files.coordinator_config), tick_seconds=0.05)
    fed = Federation(files, ws, running)
    try:
        fed.start_agents()
        history = fed.wait_rounds()
        assert [h["version"] for h in history] == ["v0001", "v0002"]
        glob = running.orchestrator.glob
        assert glob is not None and glob.saved is not None
        assert sorted(glob.saved) == ["classifier.bias", "classifier.weight"]

        ca = (files.ca_dir / "ca.pem").read_bytes()
        chan = channel(fed.address, ca, files.admin_cert.read_bytes(), files.admin_key.read_bytes(), "localhost")
        manifest = pull(chan, files.model, "latest", tmp_path / "pulled", ca)
        chan.close()
        assert manifest["secure_aggregation"] is not None  # the head went through the secure sum
    finally:
        running.stop(grace=0.1)

    # The consumer: stock transformers (a fresh random head in this process) + stock PEFT.
    torch.manual_seed(12345)
    consumer_base = AutoModelForSequenceClassification.from_pretrained(str(ws.model_dir), num_labels=3)
    random_head = consumer_base.classifier.weight.detach().clone()
    consumer = PeftModel.from_pretrained(consumer_base, str(tmp_path / "pulled")).eval()
    consumer_head = {k: v.detach().clone() for k, v in saved_parameters(consumer, ("classifier",)).items()}
    assert torch.equal(consumer_head["classifier.weight"], glob.saved["classifier.weight"])
    assert torch.equal(consumer_head["classifier.bias"], glob.saved["classifier.bias"])
    assert not torch.equal(random_head, consumer_head["classifier.weight"])  # PEFT replaced the random head

    tok = fed.loops[0].trainer.tokenizer
    batch = tok(["the nurse treats the wound in the ward.", "the trader sells the bonds at the bank."],
                return_tensors="pt", padding=True)
    with torch.no_grad():
        consumer_logits = consumer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    # Every site, started from the same global as the next round would start it.
    rule = federated_rule("fedit")
    heads, site_logits = [], []
    for loop in fed.loops:
        ctx = RoundContext(round=3, shapes=loop.trainer.target_names(), ranks={loop.site: 4}, saved=("classifier",))
        plan = rule.start(glob, ctx, loop.site, loop.alpha)
        model = loop.trainer.prepare(plan).eval()
        heads.append({k: v.detach().clone() for k, v in saved_parameters(model, ("classifier",)).items()})
        with torch.no_grad():
            site_logits.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
    for head in heads:
        assert set(head) == set(consumer_head)
        for name in head:
            assert torch.equal(head[name], consumer_head[name]), name  # bit-identical
    for logits in site_logits:
        torch.testing.assert_close(logits, consumer_logits, atol=1e-5, rtol=1e-5)
    # The head was trained (not the seeded start left as it was) and the model's output depends on it.
    assert float((consumer_logits[0] - consumer_logits[1]).abs().max()) > 0
