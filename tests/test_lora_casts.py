"""LoRA under the Trainer's bf16 autocast: skipping peft's input casts (the patch peft.cast_input_dtype) gives the
same loss and adapter gradients, and the training run turns it on only where autocast is what meets the dtypes."""

from __future__ import annotations


def _loss_and_grads(compose_cfg, skip: bool, dropout: float):
    import torch

    from gemma_run.loading import load
    from gemma_run.training import lora

    cfg = compose_cfg(["task=train", "model.dtype=bfloat16", f"lora.dropout={dropout}"])
    model = load(cfg, device_map=None).model
    torch.manual_seed(0)
    model = lora.apply(model, cfg.lora, quantized=False, sharded=False, gradient_checkpointing=False,
                       autocast=skip)
    for name, p in model.named_parameters():  # lora_B starts at zero: give it values so gradients reach lora_A
        if "lora_B" in name:
            with torch.no_grad():
                p.copy_(torch.randn_like(p) * 0.02)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}  # peft's fp32 adapters
    ids = torch.randint(3, 300, (2, 24))
    model.train()
    model._dropout_dtypes = set()
    for m in model.modules():
        if type(m).__name__ == "Dropout":
            m.register_forward_hook(lambda mod, args, out: model._dropout_dtypes.add(args[0].dtype))
    torch.manual_seed(1)  # the same dropout masks in both runs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, model


def test_skipping_peft_input_casts_under_autocast_changes_no_number(compose_cfg) -> None:
    """Without dropout the loss and every adapter gradient are bit-equal."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    loss_cast, grads_cast, _ = _loss_and_grads(compose_cfg, False, 0.0)
    loss_skip, grads_skip, model = _loss_and_grads(compose_cfg, True, 0.0)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and not any(m.cast_input_dtype_enabled for m in layers)
    assert torch.equal(loss_cast, loss_skip)
    assert grads_cast.keys() == grads_skip.keys()
    assert all(torch.equal(grads_cast[n], grads_skip[n]) for n in grads_cast)
    assert all(g.abs().sum() > 0 for n, g in grads_skip.items() if "lora_A" in n)


def test_with_dropout_it_runs_on_bf16_and_the_loss_stays_within_noise(compose_cfg) -> None:
    """With dropout the masks are drawn on bf16 instead of fp32 (other random numbers, the same distribution):
    the loss moves by dropout noise only."""
    loss_cast, _, cast = _loss_and_grads(compose_cfg, False, 0.1)
    loss_skip, _, skip = _loss_and_grads(compose_cfg, True, 0.1)
    import torch

    assert cast._dropout_dtypes == {torch.float32} and skip._dropout_dtypes == {torch.bfloat16}
    assert abs(float(loss_cast) - float(loss_skip)) < 0.005 * float(loss_cast)


def test_training_skips_the_casts_only_under_autocast(compose_cfg, tmp_path, monkeypatch) -> None:
    """The train path passes autocast=True for bf16 without DeepSpeed and False otherwise (fp32 here)."""
    from gemma_run.training import lora, trainer

    seen = []
    real = lora.apply

    def spy(*args, **kwargs):
        seen.append(kwargs["autocast"])
        return real(*args, **kwargs)

    import json

    monkeypatch.setattr(trainer.lora_setup, "apply", spy)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"the cat sat on mat number {i}"}) + "\n" for i in range(8)))
    for dtype in ("bfloat16", "float32"):
        cfg = compose_cfg(["task=train", f"model.dtype={dtype}", "train.max_steps=1", "train.save_steps=100",
                           f"data.train_file={data}", "data.format=text", "train.max_seq_length=32",
                           f"train.output_dir={tmp_path / dtype}"])
        trainer.train(cfg, tmp_path / dtype, save=False)
    assert seen == [True, False]
