"""Ports of two Hugging Face example scripts (causal language modelling, as
run_clm; sequence classification, as run_glue), written against a module that
provides ``Trainer`` and ``TrainingArguments``: transformers, or pytrainer.
Only that import differs between the runs the drop-in tests compare. Nothing is
downloaded: the tokenizer is a word-level one built here, the models tiny
configurations."""
from __future__ import annotations

import copy
import functools
import math
import random

import numpy as np
import torch

WORDS = ("the a cat dog bird fish sat ran flew swam on under over near mat rug tree pond big "
         "small red blue green old young happy sad quick slow").split()
SPECIAL = ["[PAD]", "[UNK]", "[EOS]"]


@functools.lru_cache(maxsize=None)
def tokenizer():
    """A fast word-level tokenizer over WORDS (PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                   eos_token="[EOS]", model_max_length=32)


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(count)]


@functools.lru_cache(maxsize=None)
def text_datasets(train: int = 40, evaluation: int = 11):
    """datasets.Dataset objects with the raw ``text`` column kept beside the tokens,
    as run_clm's tokenize step leaves it; sequence labels for classification."""
    import datasets
    tok = tokenizer()

    def build(count, seed):
        texts = sentences(count, seed)
        raw = datasets.Dataset.from_dict({"text": texts,
                                          "label": [int("cat" in t.split()) for t in texts]})
        return raw.map(lambda batch: tok(batch["text"], truncation=True), batched=True)

    return build(train, 0), build(evaluation, 1)


@functools.lru_cache(maxsize=None)
def initial_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(SPECIAL) + len(WORDS), n_positions=32, n_embd=32,
                        n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=2, eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(config)


@functools.lru_cache(maxsize=None)
def initial_classifier():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=2, pad_token_id=0)
    return BertForSequenceClassification(config)


def accuracy(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


CLM_ARGS = dict(per_device_train_batch_size=4, per_device_eval_batch_size=4,
                gradient_accumulation_steps=2, num_train_epochs=2, learning_rate=3e-3,
                weight_decay=0.01, warmup_steps=2, logging_steps=2, eval_strategy="steps",
                eval_steps=4, save_strategy="steps", save_steps=5, optim="adamw_torch",
                train_sampling_strategy="sequential", lr_scheduler_type="linear", seed=7,
                report_to="none", disable_tqdm=True, use_cpu=True)


def run_clm(module, output_dir, resume=None, callbacks=(), **overrides):
    """run_clm, shortened: tokenized text (its ``text`` column kept),
    DataCollatorForLanguageModeling(mlm=False), GPT-2, accumulation 2, evaluation
    every few steps; the script's calls around training (process properties,
    main_process_first, metrics and state saved, the model card). Returns the
    trainer."""
    from transformers import DataCollatorForLanguageModeling
    args = module.TrainingArguments(output_dir=str(output_dir), **{**CLM_ARGS, **overrides})
    assert isinstance(args.get_process_log_level(), int) and args.should_log
    assert (args.device.type, args.n_gpu, args.parallel_mode.value) == ("cpu", 0, "not_parallel")
    with args.main_process_first(desc="dataset map tokenization"):
        train, evaluation = text_datasets()
    train, evaluation = train.remove_columns("label"), evaluation.remove_columns("label")
    trainer = module.Trainer(
        model=copy.deepcopy(initial_gpt2()), args=args, train_dataset=train,
        eval_dataset=evaluation, processing_class=tokenizer(),
        data_collator=DataCollatorForLanguageModeling(tokenizer(), mlm=False),
        callbacks=list(callbacks))
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    metrics = dict(result.metrics, train_samples=len(train))
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    metrics = trainer.evaluate()
    metrics["perplexity"] = math.exp(metrics["eval_loss"])
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.create_model_card(finetuned_from="tiny-gpt2", tasks="text-generation")
    return trainer


GLUE_ARGS = dict(per_device_train_batch_size=4, per_device_eval_batch_size=3,
                 gradient_accumulation_steps=1, num_train_epochs=2, learning_rate=5e-3,
                 logging_steps=3, eval_strategy="epoch", save_strategy="no",
                 optim="adamw_torch", train_sampling_strategy="sequential", seed=7,
                 report_to="none", disable_tqdm=True, use_cpu=True)


def qa_style_trainer(module):
    """A Trainer subclass as run_qa's QuestionAnsweringTrainer writes one: its own
    evaluate() over get_eval_dataloader and evaluation_loop with compute_metrics
    held back and applied to the gathered predictions, then log() and the
    callback handler's on_evaluate."""
    from transformers import EvalPrediction

    class QuestionAnsweringTrainer(module.Trainer):
        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            dataloader = self.get_eval_dataloader(eval_dataset)
            compute_metrics, self.compute_metrics = self.compute_metrics, None
            try:
                output = self.evaluation_loop(
                    dataloader, description="Evaluation",
                    prediction_loss_only=True if compute_metrics is None else None,
                    ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            finally:
                self.compute_metrics = compute_metrics
            metrics = compute_metrics(EvalPrediction(predictions=output.predictions,
                                                     label_ids=output.label_ids))
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
            metrics.update(output.metrics, eval_samples=output.num_samples)
            if self.args.should_log:
                self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state,
                                                             self.control, metrics)
            return metrics

    return QuestionAnsweringTrainer


def run_glue(module, output_dir, trainer_class=None, callbacks=(), **overrides):
    """run_glue, shortened: the default collator for a tokenizer
    (DataCollatorWithPadding), compute_metrics with accuracy."""
    train, evaluation = text_datasets()
    args = module.TrainingArguments(output_dir=str(output_dir), **{**GLUE_ARGS, **overrides})
    trainer = (trainer_class or module.Trainer)(model=copy.deepcopy(initial_classifier()), args=args,
                             train_dataset=train, eval_dataset=evaluation,
                             processing_class=tokenizer(), compute_metrics=accuracy,
                             callbacks=list(callbacks))
    metrics = trainer.train().metrics
    trainer.log_metrics("train", metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return trainer
